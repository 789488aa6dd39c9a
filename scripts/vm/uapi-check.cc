// Compiled by check-uapi.sh against one kernel's installed uAPI headers: every struct and
// ioctl number native/uapi.h defines by hand must equal the kernel's own. Compiling is the
// check (static_assert); nothing runs.
//
// Our header comes first, and our numbers are copied under other names (ours_NAME) before
// the kernel's headers define theirs as macros (which would otherwise rewrite our names;
// the ## paste keeps the macro from expanding).
#include "uapi.h"
#include "uapi_vcpu.h"
#include "uapi_coco.h"

#define OURS(name) constexpr unsigned long ours_##name = uapi::name;
OURS(KVM_GET_API_VERSION)
OURS(KVM_CREATE_VM)
OURS(KVM_CHECK_EXTENSION)
OURS(KVM_SET_USER_MEMORY_REGION2)
OURS(KVM_SET_MEMORY_ATTRIBUTES)
OURS(KVM_CREATE_GUEST_MEMFD)
OURS(KVM_PRE_FAULT_MEMORY)
OURS(KVM_GET_VCPU_MMAP_SIZE)
OURS(KVM_GET_SUPPORTED_CPUID)
OURS(KVM_CREATE_VCPU)
OURS(KVM_RUN)
OURS(KVM_GET_REGS)
OURS(KVM_SET_REGS)
OURS(KVM_GET_SREGS)
OURS(KVM_SET_SREGS)
OURS(KVM_SET_CPUID2)
OURS(KVM_ENABLE_CAP)
OURS(KVM_EXIT_UNKNOWN)
OURS(KVM_EXIT_EXCEPTION)
OURS(KVM_EXIT_IO)
OURS(KVM_EXIT_HYPERCALL)
OURS(KVM_EXIT_DEBUG)
OURS(KVM_EXIT_HLT)
OURS(KVM_EXIT_MMIO)
OURS(KVM_EXIT_SHUTDOWN)
OURS(KVM_EXIT_FAIL_ENTRY)
OURS(KVM_EXIT_INTR)
OURS(KVM_EXIT_INTERNAL_ERROR)
OURS(KVM_EXIT_SYSTEM_EVENT)
OURS(KVM_EXIT_MEMORY_FAULT)
OURS(KVM_EXIT_TDX)
OURS(KVM_EXIT_IO_IN)
OURS(KVM_EXIT_IO_OUT)
OURS(VFIO_GET_API_VERSION)
OURS(VFIO_CHECK_EXTENSION)
OURS(VFIO_SET_IOMMU)
OURS(VFIO_GROUP_GET_STATUS)
OURS(VFIO_GROUP_SET_CONTAINER)
OURS(VFIO_GROUP_GET_DEVICE_FD)
OURS(VFIO_DEVICE_GET_INFO)
OURS(VFIO_DEVICE_GET_REGION_INFO)
OURS(VFIO_IOMMU_GET_INFO)
OURS(VFIO_IOMMU_MAP_DMA)
OURS(VFIO_IOMMU_UNMAP_DMA)
OURS(VFIO_DEVICE_BIND_IOMMUFD)
OURS(VFIO_DEVICE_ATTACH_IOMMUFD_PT)
OURS(IOMMU_IOAS_ALLOC)
OURS(IOMMU_IOAS_IOVA_RANGES)
OURS(IOMMU_IOAS_MAP)
OURS(IOMMU_IOAS_UNMAP)
OURS(VFIO_IOMMU_INFO_PGSIZES)
OURS(VFIO_IOMMU_INFO_CAPS)
OURS(VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE)
OURS(VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL)
OURS(VFIO_DMA_MAP_FLAG_READ)
OURS(VFIO_DMA_MAP_FLAG_WRITE)
OURS(IOMMU_IOAS_MAP_FIXED_IOVA)
OURS(IOMMU_IOAS_MAP_WRITEABLE)
OURS(IOMMU_IOAS_MAP_READABLE)
OURS(KVM_MEMORY_ENCRYPT_OP)
OURS(KVM_SEV_INIT2)
OURS(KVM_TDX_CAPABILITIES)
OURS(KVM_TDX_INIT_VM)
OURS(KVM_SEV_SNP_LAUNCH_START)
OURS(KVM_SEV_SNP_LAUNCH_UPDATE)
OURS(KVM_SEV_SNP_LAUNCH_FINISH)
OURS(KVM_SEV_SNP_PAGE_TYPE_NORMAL)
OURS(KVM_SEV_SNP_PAGE_TYPE_ZERO)
OURS(KVM_SEV_SNP_PAGE_TYPE_UNMEASURED)
OURS(KVM_SEV_SNP_PAGE_TYPE_SECRETS)
OURS(KVM_SEV_SNP_PAGE_TYPE_CPUID)
OURS(KVM_SEV_SNP_FINISH_DATA_SIZE)
OURS(KVM_TDX_INIT_VCPU)
OURS(KVM_TDX_INIT_MEM_REGION)
OURS(KVM_TDX_FINALIZE_VM)
OURS(KVM_TDX_GET_CPUID)
OURS(KVM_TDX_MEASURE_MEMORY_REGION)
#undef OURS

#include <linux/falloc.h>
#include <linux/iommufd.h>
#include <linux/kvm.h>
#include <linux/vfio.h>

#define SAME_NUMBER(name) static_assert(ours_##name == (name), #name " differs from the kernel's")
SAME_NUMBER(KVM_GET_API_VERSION);
SAME_NUMBER(KVM_CREATE_VM);
SAME_NUMBER(KVM_CHECK_EXTENSION);
SAME_NUMBER(KVM_SET_USER_MEMORY_REGION2);
SAME_NUMBER(KVM_SET_MEMORY_ATTRIBUTES);
SAME_NUMBER(KVM_CREATE_GUEST_MEMFD);
SAME_NUMBER(KVM_PRE_FAULT_MEMORY);
SAME_NUMBER(KVM_GET_VCPU_MMAP_SIZE);
SAME_NUMBER(KVM_GET_SUPPORTED_CPUID);
SAME_NUMBER(KVM_CREATE_VCPU);
SAME_NUMBER(KVM_RUN);
SAME_NUMBER(KVM_GET_REGS);
SAME_NUMBER(KVM_SET_REGS);
SAME_NUMBER(KVM_GET_SREGS);
SAME_NUMBER(KVM_SET_SREGS);
SAME_NUMBER(KVM_SET_CPUID2);
SAME_NUMBER(KVM_ENABLE_CAP);
SAME_NUMBER(KVM_EXIT_UNKNOWN);
SAME_NUMBER(KVM_EXIT_EXCEPTION);
SAME_NUMBER(KVM_EXIT_IO);
SAME_NUMBER(KVM_EXIT_HYPERCALL);
SAME_NUMBER(KVM_EXIT_DEBUG);
SAME_NUMBER(KVM_EXIT_HLT);
SAME_NUMBER(KVM_EXIT_MMIO);
SAME_NUMBER(KVM_EXIT_SHUTDOWN);
SAME_NUMBER(KVM_EXIT_FAIL_ENTRY);
SAME_NUMBER(KVM_EXIT_INTR);
SAME_NUMBER(KVM_EXIT_INTERNAL_ERROR);
SAME_NUMBER(KVM_EXIT_SYSTEM_EVENT);
SAME_NUMBER(KVM_EXIT_MEMORY_FAULT);
SAME_NUMBER(KVM_EXIT_IO_IN);
SAME_NUMBER(KVM_EXIT_IO_OUT);
SAME_NUMBER(VFIO_GET_API_VERSION);
SAME_NUMBER(VFIO_CHECK_EXTENSION);
SAME_NUMBER(VFIO_SET_IOMMU);
SAME_NUMBER(VFIO_GROUP_GET_STATUS);
SAME_NUMBER(VFIO_GROUP_SET_CONTAINER);
SAME_NUMBER(VFIO_GROUP_GET_DEVICE_FD);
SAME_NUMBER(VFIO_DEVICE_GET_INFO);
SAME_NUMBER(VFIO_DEVICE_GET_REGION_INFO);
SAME_NUMBER(VFIO_IOMMU_GET_INFO);
SAME_NUMBER(VFIO_IOMMU_MAP_DMA);
SAME_NUMBER(VFIO_IOMMU_UNMAP_DMA);
SAME_NUMBER(VFIO_DEVICE_BIND_IOMMUFD);
SAME_NUMBER(VFIO_DEVICE_ATTACH_IOMMUFD_PT);
SAME_NUMBER(IOMMU_IOAS_ALLOC);
SAME_NUMBER(IOMMU_IOAS_IOVA_RANGES);
SAME_NUMBER(IOMMU_IOAS_MAP);
SAME_NUMBER(IOMMU_IOAS_UNMAP);
SAME_NUMBER(VFIO_IOMMU_INFO_PGSIZES);
SAME_NUMBER(VFIO_IOMMU_INFO_CAPS);
SAME_NUMBER(VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE);
SAME_NUMBER(VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL);
SAME_NUMBER(VFIO_DMA_MAP_FLAG_READ);
SAME_NUMBER(VFIO_DMA_MAP_FLAG_WRITE);
SAME_NUMBER(IOMMU_IOAS_MAP_FIXED_IOVA);
SAME_NUMBER(IOMMU_IOAS_MAP_WRITEABLE);
SAME_NUMBER(IOMMU_IOAS_MAP_READABLE);
SAME_NUMBER(KVM_MEMORY_ENCRYPT_OP);
SAME_NUMBER(KVM_SEV_INIT2);

// Same size, and each field at the same offset with the same size.
#define SAME_SIZE(type) static_assert(sizeof(uapi::type) == sizeof(::type), #type ": size differs from the kernel's")
// VFIO and iommufd structs carry their own size (argsz, size) and grow at the end: 7.2's
// vfio_device_bind_iommufd has a token_uuid_ptr after out_devid, its attach_iommufd_pt a
// pasid. The kernel accepts any size from its minimum, so ours must be a prefix of the
// kernel's (every field of ours checked below), not the whole of it.
#define EXTENSIBLE(type) static_assert(sizeof(uapi::type) <= sizeof(::type), #type ": ours is larger than the kernel's")
#define SAME_FIELD(type, field)                                                    \
  static_assert(offsetof(uapi::type, field) == offsetof(::type, field),            \
                #type "." #field ": offset differs from the kernel's");            \
  static_assert(sizeof(uapi::type::field) == sizeof(::type::field), #type "." #field ": size differs from the kernel's")

SAME_SIZE(kvm_userspace_memory_region2);
SAME_FIELD(kvm_userspace_memory_region2, slot);
SAME_FIELD(kvm_userspace_memory_region2, flags);
SAME_FIELD(kvm_userspace_memory_region2, guest_phys_addr);
SAME_FIELD(kvm_userspace_memory_region2, memory_size);
SAME_FIELD(kvm_userspace_memory_region2, userspace_addr);
SAME_FIELD(kvm_userspace_memory_region2, guest_memfd_offset);
SAME_FIELD(kvm_userspace_memory_region2, guest_memfd);
SAME_FIELD(kvm_userspace_memory_region2, pad1);
SAME_FIELD(kvm_userspace_memory_region2, pad2);

SAME_SIZE(kvm_memory_attributes);
SAME_FIELD(kvm_memory_attributes, address);
SAME_FIELD(kvm_memory_attributes, size);
SAME_FIELD(kvm_memory_attributes, attributes);
SAME_FIELD(kvm_memory_attributes, flags);

SAME_SIZE(kvm_create_guest_memfd);
SAME_FIELD(kvm_create_guest_memfd, size);
SAME_FIELD(kvm_create_guest_memfd, flags);
SAME_FIELD(kvm_create_guest_memfd, reserved);

SAME_SIZE(kvm_pre_fault_memory);
SAME_FIELD(kvm_pre_fault_memory, gpa);
SAME_FIELD(kvm_pre_fault_memory, size);
SAME_FIELD(kvm_pre_fault_memory, flags);
SAME_FIELD(kvm_pre_fault_memory, padding);

EXTENSIBLE(vfio_group_status);
SAME_FIELD(vfio_group_status, argsz);
SAME_FIELD(vfio_group_status, flags);

EXTENSIBLE(vfio_device_info);
SAME_FIELD(vfio_device_info, flags);
SAME_FIELD(vfio_device_info, num_regions);
SAME_FIELD(vfio_device_info, num_irqs);
SAME_FIELD(vfio_device_info, cap_offset);

EXTENSIBLE(vfio_region_info);
SAME_FIELD(vfio_region_info, index);
SAME_FIELD(vfio_region_info, cap_offset);
SAME_FIELD(vfio_region_info, size);
SAME_FIELD(vfio_region_info, offset);

EXTENSIBLE(vfio_iommu_type1_info);
SAME_FIELD(vfio_iommu_type1_info, flags);
SAME_FIELD(vfio_iommu_type1_info, iova_pgsizes);
SAME_FIELD(vfio_iommu_type1_info, cap_offset);

SAME_SIZE(vfio_info_cap_header);
SAME_FIELD(vfio_info_cap_header, id);
SAME_FIELD(vfio_info_cap_header, version);
SAME_FIELD(vfio_info_cap_header, next);

SAME_SIZE(vfio_iova_range);
SAME_FIELD(vfio_iova_range, start);
SAME_FIELD(vfio_iova_range, end);

SAME_SIZE(vfio_iommu_type1_info_cap_iova_range);
SAME_FIELD(vfio_iommu_type1_info_cap_iova_range, header);
SAME_FIELD(vfio_iommu_type1_info_cap_iova_range, nr_iovas);
static_assert(offsetof(uapi::vfio_iommu_type1_info_cap_iova_range, iova_ranges) ==
              offsetof(::vfio_iommu_type1_info_cap_iova_range, iova_ranges));

SAME_SIZE(vfio_iommu_type1_info_dma_avail);
SAME_FIELD(vfio_iommu_type1_info_dma_avail, header);
SAME_FIELD(vfio_iommu_type1_info_dma_avail, avail);

EXTENSIBLE(vfio_iommu_type1_dma_map);
SAME_FIELD(vfio_iommu_type1_dma_map, flags);
SAME_FIELD(vfio_iommu_type1_dma_map, vaddr);
SAME_FIELD(vfio_iommu_type1_dma_map, iova);
SAME_FIELD(vfio_iommu_type1_dma_map, size);

EXTENSIBLE(vfio_iommu_type1_dma_unmap);
SAME_FIELD(vfio_iommu_type1_dma_unmap, flags);
SAME_FIELD(vfio_iommu_type1_dma_unmap, iova);
SAME_FIELD(vfio_iommu_type1_dma_unmap, size);

EXTENSIBLE(vfio_device_bind_iommufd);
SAME_FIELD(vfio_device_bind_iommufd, flags);
SAME_FIELD(vfio_device_bind_iommufd, iommufd);
SAME_FIELD(vfio_device_bind_iommufd, out_devid);

EXTENSIBLE(vfio_device_attach_iommufd_pt);
SAME_FIELD(vfio_device_attach_iommufd_pt, flags);
SAME_FIELD(vfio_device_attach_iommufd_pt, pt_id);

EXTENSIBLE(iommu_ioas_alloc);
SAME_FIELD(iommu_ioas_alloc, flags);
SAME_FIELD(iommu_ioas_alloc, out_ioas_id);

SAME_SIZE(iommu_iova_range);
SAME_FIELD(iommu_iova_range, start);
SAME_FIELD(iommu_iova_range, last);

EXTENSIBLE(iommu_ioas_iova_ranges);
SAME_FIELD(iommu_ioas_iova_ranges, ioas_id);
SAME_FIELD(iommu_ioas_iova_ranges, num_iovas);
SAME_FIELD(iommu_ioas_iova_ranges, allowed_iovas);
SAME_FIELD(iommu_ioas_iova_ranges, out_iova_alignment);

EXTENSIBLE(iommu_ioas_map);
SAME_FIELD(iommu_ioas_map, flags);
SAME_FIELD(iommu_ioas_map, ioas_id);
SAME_FIELD(iommu_ioas_map, user_va);
SAME_FIELD(iommu_ioas_map, length);
SAME_FIELD(iommu_ioas_map, iova);

EXTENSIBLE(iommu_ioas_unmap);
SAME_FIELD(iommu_ioas_unmap, ioas_id);
SAME_FIELD(iommu_ioas_unmap, iova);
SAME_FIELD(iommu_ioas_unmap, length);

// SEV-SNP's KVM_SEV_INIT2 (6.10+: both harness kernels have it).
SAME_SIZE(kvm_sev_cmd);
SAME_FIELD(kvm_sev_cmd, id);
SAME_FIELD(kvm_sev_cmd, data);
SAME_FIELD(kvm_sev_cmd, error);
SAME_FIELD(kvm_sev_cmd, sev_fd);

SAME_SIZE(kvm_sev_init);
SAME_FIELD(kvm_sev_init, vmsa_features);
SAME_FIELD(kvm_sev_init, flags);
SAME_FIELD(kvm_sev_init, ghcb_version);
SAME_FIELD(kvm_sev_init, pad2);

// SEV-SNP's launch (6.11+: both harness kernels have it).
SAME_NUMBER(KVM_SEV_SNP_LAUNCH_START);
SAME_NUMBER(KVM_SEV_SNP_LAUNCH_UPDATE);
SAME_NUMBER(KVM_SEV_SNP_LAUNCH_FINISH);
SAME_NUMBER(KVM_SEV_SNP_PAGE_TYPE_NORMAL);
SAME_NUMBER(KVM_SEV_SNP_PAGE_TYPE_ZERO);
SAME_NUMBER(KVM_SEV_SNP_PAGE_TYPE_UNMEASURED);
SAME_NUMBER(KVM_SEV_SNP_PAGE_TYPE_SECRETS);
SAME_NUMBER(KVM_SEV_SNP_PAGE_TYPE_CPUID);
SAME_NUMBER(KVM_SEV_SNP_FINISH_DATA_SIZE);

SAME_SIZE(kvm_sev_snp_launch_start);
SAME_FIELD(kvm_sev_snp_launch_start, policy);
SAME_FIELD(kvm_sev_snp_launch_start, gosvw);
SAME_FIELD(kvm_sev_snp_launch_start, flags);
SAME_FIELD(kvm_sev_snp_launch_start, pad0);
SAME_FIELD(kvm_sev_snp_launch_start, pad1);

SAME_SIZE(kvm_sev_snp_launch_update);
SAME_FIELD(kvm_sev_snp_launch_update, gfn_start);
SAME_FIELD(kvm_sev_snp_launch_update, uaddr);
SAME_FIELD(kvm_sev_snp_launch_update, len);
SAME_FIELD(kvm_sev_snp_launch_update, type);
SAME_FIELD(kvm_sev_snp_launch_update, pad0);
SAME_FIELD(kvm_sev_snp_launch_update, flags);
SAME_FIELD(kvm_sev_snp_launch_update, pad1);
SAME_FIELD(kvm_sev_snp_launch_update, pad2);

SAME_SIZE(kvm_sev_snp_launch_finish);
SAME_FIELD(kvm_sev_snp_launch_finish, id_block_uaddr);
SAME_FIELD(kvm_sev_snp_launch_finish, id_auth_uaddr);
SAME_FIELD(kvm_sev_snp_launch_finish, id_block_en);
SAME_FIELD(kvm_sev_snp_launch_finish, auth_key_en);
SAME_FIELD(kvm_sev_snp_launch_finish, vcek_disabled);
SAME_FIELD(kvm_sev_snp_launch_finish, host_data);
SAME_FIELD(kvm_sev_snp_launch_finish, pad0);
SAME_FIELD(kvm_sev_snp_launch_finish, flags);
SAME_FIELD(kvm_sev_snp_launch_finish, pad1);

// TDX (6.16+): 6.12's headers have none of it; 7.2's must.
#ifdef KVM_X86_TDX_VM
SAME_NUMBER(KVM_TDX_CAPABILITIES);
SAME_NUMBER(KVM_TDX_INIT_VM);
SAME_NUMBER(KVM_TDX_INIT_VCPU);
SAME_NUMBER(KVM_TDX_INIT_MEM_REGION);
SAME_NUMBER(KVM_TDX_FINALIZE_VM);
SAME_NUMBER(KVM_TDX_MEASURE_MEMORY_REGION);

SAME_SIZE(kvm_tdx_init_mem_region);
SAME_FIELD(kvm_tdx_init_mem_region, source_addr);
SAME_FIELD(kvm_tdx_init_mem_region, gpa);
SAME_FIELD(kvm_tdx_init_mem_region, nr_pages);

SAME_SIZE(kvm_tdx_cmd);
SAME_FIELD(kvm_tdx_cmd, id);
SAME_FIELD(kvm_tdx_cmd, flags);
SAME_FIELD(kvm_tdx_cmd, data);
SAME_FIELD(kvm_tdx_cmd, hw_error);

SAME_SIZE(kvm_tdx_capabilities);
SAME_FIELD(kvm_tdx_capabilities, supported_attrs);
SAME_FIELD(kvm_tdx_capabilities, supported_xfam);
SAME_FIELD(kvm_tdx_capabilities, reserved);
SAME_FIELD(kvm_tdx_capabilities, cpuid);

SAME_SIZE(kvm_tdx_init_vm);
SAME_FIELD(kvm_tdx_init_vm, attributes);
SAME_FIELD(kvm_tdx_init_vm, xfam);
SAME_FIELD(kvm_tdx_init_vm, mrconfigid);
SAME_FIELD(kvm_tdx_init_vm, mrowner);
SAME_FIELD(kvm_tdx_init_vm, mrownerconfig);
SAME_FIELD(kvm_tdx_init_vm, reserved);
SAME_FIELD(kvm_tdx_init_vm, cpuid);

SAME_NUMBER(KVM_EXIT_TDX);
SAME_FIELD(kvm_run, tdx.flags);
SAME_FIELD(kvm_run, tdx.nr);
SAME_FIELD(kvm_run, tdx.unknown.ret);
SAME_FIELD(kvm_run, tdx.unknown.data);
SAME_NUMBER(KVM_TDX_GET_CPUID);
#elif defined(GUESTMEM_UAPI_NEWEST)
#error "the newest harness kernel must have TDX's uAPI (KVM_X86_TDX_VM)"
#endif

// The numbers lib/kvm/kvm-constants.ts uses, generated by check-uapi.sh from that file.
#include "kvm-constants.h"

int main() { return 0; }
