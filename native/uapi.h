// Kernel uAPI that the build machine's /usr/include/linux predates (guest_memfd, memory
// attributes, USER_MEMORY2, iommufd, VFIO cdev), defined here once. The kernel's uAPI is
// ABI: every struct is pinned by static_assert on its size and field offsets, with values
// taken from Linux 6.12's include/uapi; scripts/vm/check-uapi.sh compiles all of it against
// the installed uAPI headers of both harness kernels (6.12 and 7.2) in CI.
#pragma once

#include <linux/ioctl.h>
#include <cstddef>
#include <cstdint>

namespace uapi {

// ---- KVM (include/uapi/linux/kvm.h, arch/x86/include/uapi/asm/kvm.h) ----
constexpr unsigned kKvmIo = 0xAE;

struct kvm_userspace_memory_region2 {
  uint32_t slot;
  uint32_t flags;
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;
  uint64_t guest_memfd_offset;
  uint32_t guest_memfd;
  uint32_t pad1;
  uint64_t pad2[14];
};
static_assert(sizeof(kvm_userspace_memory_region2) == 160);
static_assert(offsetof(kvm_userspace_memory_region2, guest_phys_addr) == 8);
static_assert(offsetof(kvm_userspace_memory_region2, memory_size) == 16);
static_assert(offsetof(kvm_userspace_memory_region2, userspace_addr) == 24);
static_assert(offsetof(kvm_userspace_memory_region2, guest_memfd_offset) == 32);
static_assert(offsetof(kvm_userspace_memory_region2, guest_memfd) == 40);
static_assert(offsetof(kvm_userspace_memory_region2, pad2) == 48);

struct kvm_memory_attributes {
  uint64_t address;
  uint64_t size;
  uint64_t attributes;
  uint64_t flags;
};
static_assert(sizeof(kvm_memory_attributes) == 32);
static_assert(offsetof(kvm_memory_attributes, size) == 8);
static_assert(offsetof(kvm_memory_attributes, attributes) == 16);
static_assert(offsetof(kvm_memory_attributes, flags) == 24);

struct kvm_create_guest_memfd {
  uint64_t size;
  uint64_t flags;
  uint64_t reserved[6];
};
static_assert(sizeof(kvm_create_guest_memfd) == 64);
static_assert(offsetof(kvm_create_guest_memfd, flags) == 8);
static_assert(offsetof(kvm_create_guest_memfd, reserved) == 16);

// KVM_PRE_FAULT_MEMORY (6.10+, a vCPU ioctl): the kernel advances gpa and shrinks size
// as it maps, so a partial answer can be resumed.
struct kvm_pre_fault_memory {
  uint64_t gpa;
  uint64_t size;
  uint64_t flags;
  uint64_t padding[5];
};
static_assert(sizeof(kvm_pre_fault_memory) == 64);
static_assert(offsetof(kvm_pre_fault_memory, size) == 8);
static_assert(offsetof(kvm_pre_fault_memory, flags) == 16);
static_assert(offsetof(kvm_pre_fault_memory, padding) == 24);

constexpr unsigned long KVM_GET_API_VERSION = _IO(kKvmIo, 0x00);
constexpr unsigned long KVM_CREATE_VM = _IO(kKvmIo, 0x01);
constexpr unsigned long KVM_CHECK_EXTENSION = _IO(kKvmIo, 0x03);
constexpr unsigned long KVM_SET_USER_MEMORY_REGION2 = _IOW(kKvmIo, 0x49, kvm_userspace_memory_region2);
constexpr unsigned long KVM_SET_MEMORY_ATTRIBUTES = _IOW(kKvmIo, 0xd2, kvm_memory_attributes);
constexpr unsigned long KVM_CREATE_GUEST_MEMFD = _IOWR(kKvmIo, 0xd4, kvm_create_guest_memfd);
constexpr unsigned long KVM_PRE_FAULT_MEMORY = _IOWR(kKvmIo, 0xd5, kvm_pre_fault_memory);
static_assert(KVM_SET_USER_MEMORY_REGION2 == 0x40a0ae49);
static_assert(KVM_SET_MEMORY_ATTRIBUTES == 0x4020aed2);
static_assert(KVM_CREATE_GUEST_MEMFD == 0xc040aed4);
static_assert(KVM_PRE_FAULT_MEMORY == 0xc040aed5);

// ---- VFIO (include/uapi/linux/vfio.h) ----
constexpr unsigned kVfioType = ';';
constexpr unsigned kVfioBase = 100;

struct vfio_group_status {
  uint32_t argsz;
  uint32_t flags;
};
static_assert(sizeof(vfio_group_status) == 8);

struct vfio_device_info {
  uint32_t argsz;
  uint32_t flags;
  uint32_t num_regions;
  uint32_t num_irqs;
  uint32_t cap_offset;
  uint32_t pad;
};
static_assert(sizeof(vfio_device_info) == 24);
static_assert(offsetof(vfio_device_info, num_regions) == 8);

struct vfio_region_info {
  uint32_t argsz;
  uint32_t flags;
  uint32_t index;
  uint32_t cap_offset;
  uint64_t size;
  uint64_t offset;
};
static_assert(sizeof(vfio_region_info) == 32);
static_assert(offsetof(vfio_region_info, size) == 16);
static_assert(offsetof(vfio_region_info, offset) == 24);

struct vfio_iommu_type1_info {
  uint32_t argsz;
  uint32_t flags;
  uint64_t iova_pgsizes;
  uint32_t cap_offset;
  uint32_t pad;
};
static_assert(sizeof(vfio_iommu_type1_info) == 24);
static_assert(offsetof(vfio_iommu_type1_info, iova_pgsizes) == 8);
static_assert(offsetof(vfio_iommu_type1_info, cap_offset) == 16);

struct vfio_info_cap_header {
  uint16_t id;
  uint16_t version;
  uint32_t next;
};
static_assert(sizeof(vfio_info_cap_header) == 8);

struct vfio_iova_range {
  uint64_t start;
  uint64_t end;
};
struct vfio_iommu_type1_info_cap_iova_range {
  vfio_info_cap_header header;
  uint32_t nr_iovas;
  uint32_t reserved;
  vfio_iova_range iova_ranges[];
};
static_assert(sizeof(vfio_iommu_type1_info_cap_iova_range) == 16);
static_assert(offsetof(vfio_iommu_type1_info_cap_iova_range, iova_ranges) == 16);

struct vfio_iommu_type1_info_dma_avail {
  vfio_info_cap_header header;
  uint32_t avail;
};
static_assert(sizeof(vfio_iommu_type1_info_dma_avail) == 12);
static_assert(offsetof(vfio_iommu_type1_info_dma_avail, avail) == 8);

struct vfio_iommu_type1_dma_map {
  uint32_t argsz;
  uint32_t flags;
  uint64_t vaddr;
  uint64_t iova;
  uint64_t size;
};
static_assert(sizeof(vfio_iommu_type1_dma_map) == 32);
static_assert(offsetof(vfio_iommu_type1_dma_map, vaddr) == 8);
static_assert(offsetof(vfio_iommu_type1_dma_map, iova) == 16);
static_assert(offsetof(vfio_iommu_type1_dma_map, size) == 24);

struct vfio_iommu_type1_dma_unmap {
  uint32_t argsz;
  uint32_t flags;
  uint64_t iova;
  uint64_t size;
};
static_assert(sizeof(vfio_iommu_type1_dma_unmap) == 24);
static_assert(offsetof(vfio_iommu_type1_dma_unmap, iova) == 8);

struct vfio_device_bind_iommufd {
  uint32_t argsz;
  uint32_t flags;
  int32_t iommufd;
  uint32_t out_devid;
};
static_assert(sizeof(vfio_device_bind_iommufd) == 16);
static_assert(offsetof(vfio_device_bind_iommufd, out_devid) == 12);

struct vfio_device_attach_iommufd_pt {
  uint32_t argsz;
  uint32_t flags;
  uint32_t pt_id;
};
static_assert(sizeof(vfio_device_attach_iommufd_pt) == 12);

constexpr unsigned long VFIO_GET_API_VERSION = _IO(kVfioType, kVfioBase + 0);
constexpr unsigned long VFIO_CHECK_EXTENSION = _IO(kVfioType, kVfioBase + 1);
constexpr unsigned long VFIO_SET_IOMMU = _IO(kVfioType, kVfioBase + 2);
constexpr unsigned long VFIO_GROUP_GET_STATUS = _IO(kVfioType, kVfioBase + 3);
constexpr unsigned long VFIO_GROUP_SET_CONTAINER = _IO(kVfioType, kVfioBase + 4);
constexpr unsigned long VFIO_GROUP_GET_DEVICE_FD = _IO(kVfioType, kVfioBase + 6);
constexpr unsigned long VFIO_DEVICE_GET_INFO = _IO(kVfioType, kVfioBase + 7);
constexpr unsigned long VFIO_DEVICE_GET_REGION_INFO = _IO(kVfioType, kVfioBase + 8);
constexpr unsigned long VFIO_IOMMU_GET_INFO = _IO(kVfioType, kVfioBase + 12);
constexpr unsigned long VFIO_IOMMU_MAP_DMA = _IO(kVfioType, kVfioBase + 13);
constexpr unsigned long VFIO_IOMMU_UNMAP_DMA = _IO(kVfioType, kVfioBase + 14);
constexpr unsigned long VFIO_DEVICE_BIND_IOMMUFD = _IO(kVfioType, kVfioBase + 18);
constexpr unsigned long VFIO_DEVICE_ATTACH_IOMMUFD_PT = _IO(kVfioType, kVfioBase + 19);

constexpr uint32_t VFIO_IOMMU_INFO_PGSIZES = 1u << 0;
constexpr uint32_t VFIO_IOMMU_INFO_CAPS = 1u << 1;
constexpr uint16_t VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1;
constexpr uint16_t VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3;
constexpr uint32_t VFIO_DMA_MAP_FLAG_READ = 1u << 0;
constexpr uint32_t VFIO_DMA_MAP_FLAG_WRITE = 1u << 1;

// ---- iommufd (include/uapi/linux/iommufd.h) ----
constexpr unsigned kIommufdType = ';';

struct iommu_ioas_alloc {
  uint32_t size;
  uint32_t flags;
  uint32_t out_ioas_id;
};
static_assert(sizeof(iommu_ioas_alloc) == 12);

struct iommu_iova_range {
  uint64_t start;
  uint64_t last;
};
static_assert(sizeof(iommu_iova_range) == 16);

struct iommu_ioas_iova_ranges {
  uint32_t size;
  uint32_t ioas_id;
  uint32_t num_iovas;
  uint32_t reserved;
  uint64_t allowed_iovas;
  uint64_t out_iova_alignment;
};
static_assert(sizeof(iommu_ioas_iova_ranges) == 32);
static_assert(offsetof(iommu_ioas_iova_ranges, num_iovas) == 8);
static_assert(offsetof(iommu_ioas_iova_ranges, allowed_iovas) == 16);
static_assert(offsetof(iommu_ioas_iova_ranges, out_iova_alignment) == 24);

struct iommu_ioas_map {
  uint32_t size;
  uint32_t flags;
  uint32_t ioas_id;
  uint32_t reserved;
  uint64_t user_va;
  uint64_t length;
  uint64_t iova;
};
static_assert(sizeof(iommu_ioas_map) == 40);
static_assert(offsetof(iommu_ioas_map, user_va) == 16);
static_assert(offsetof(iommu_ioas_map, length) == 24);
static_assert(offsetof(iommu_ioas_map, iova) == 32);

struct iommu_ioas_unmap {
  uint32_t size;
  uint32_t ioas_id;
  uint64_t iova;
  uint64_t length;
};
static_assert(sizeof(iommu_ioas_unmap) == 24);
static_assert(offsetof(iommu_ioas_unmap, iova) == 8);
static_assert(offsetof(iommu_ioas_unmap, length) == 16);

constexpr unsigned long IOMMU_IOAS_ALLOC = _IO(kIommufdType, 0x81);
constexpr unsigned long IOMMU_IOAS_IOVA_RANGES = _IO(kIommufdType, 0x84);
constexpr unsigned long IOMMU_IOAS_MAP = _IO(kIommufdType, 0x85);
constexpr unsigned long IOMMU_IOAS_UNMAP = _IO(kIommufdType, 0x86);

constexpr uint32_t IOMMU_IOAS_MAP_FIXED_IOVA = 1u << 0;
constexpr uint32_t IOMMU_IOAS_MAP_WRITEABLE = 1u << 1;
constexpr uint32_t IOMMU_IOAS_MAP_READABLE = 1u << 2;

}  // namespace uapi
