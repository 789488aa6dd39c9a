// VFIO type1: the container (/dev/vfio/vfio) and group (/dev/vfio/N) ioctls, the IOMMU
// info capability chain, and DMA map/unmap.
#include <vector>

#include "args.h"
#include "dma_extents.h"
#include "fault_injection.h"
#include "uapi.h"

namespace {

Napi::Value SimpleIoctl(const Napi::CallbackInfo& info, unsigned long request, const char* syscall, bool has_arg) {
  Args args(info);
  int result = RetryIoctlInt(args.Fd(0), request, has_arg ? args.U32(1, "argument") : 0);
  if (result < 0) throw ErrnoError(info.Env(), errno, syscall);
  return Napi::Number::New(info.Env(), result);
}

Napi::Value GetApiVersion(const Napi::CallbackInfo& info) {
  return SimpleIoctl(info, uapi::VFIO_GET_API_VERSION, "ioctl(VFIO_GET_API_VERSION)", false);
}

Napi::Value CheckExtension(const Napi::CallbackInfo& info) {
  return SimpleIoctl(info, uapi::VFIO_CHECK_EXTENSION, "ioctl(VFIO_CHECK_EXTENSION)", true);
}

Napi::Value SetIommu(const Napi::CallbackInfo& info) {
  return SimpleIoctl(info, uapi::VFIO_SET_IOMMU, "ioctl(VFIO_SET_IOMMU)", true);
}

Napi::Value GroupGetStatus(const Napi::CallbackInfo& info) {
  Args args(info);
  uapi::vfio_group_status status{sizeof(status), 0};
  if (RetryIoctl(args.Fd(0), uapi::VFIO_GROUP_GET_STATUS, &status) < 0) {
    throw ErrnoError(info.Env(), errno, "ioctl(VFIO_GROUP_GET_STATUS)");
  }
  return Napi::Number::New(info.Env(), status.flags);
}

Napi::Value GroupSetContainer(const Napi::CallbackInfo& info) {
  Args args(info);
  int container = args.Fd(1);
  if (RetryIoctl(args.Fd(0), uapi::VFIO_GROUP_SET_CONTAINER, &container) < 0) {
    throw ErrnoError(info.Env(), errno, "ioctl(VFIO_GROUP_SET_CONTAINER)");
  }
  return info.Env().Undefined();
}

// VFIO_IOMMU_GET_INFO with its capability chain: the caller learns the size it needs from
// argsz and asks again; the capabilities follow the fixed struct.
Napi::Value IommuGetInfo(const Napi::CallbackInfo& info) {
  Args args(info);
  int fd = args.Fd(0);
  Napi::Env env = info.Env();
  std::vector<uint8_t> storage(sizeof(uapi::vfio_iommu_type1_info));
  for (int attempt = 0; attempt < 2; attempt++) {
    auto* request = reinterpret_cast<uapi::vfio_iommu_type1_info*>(storage.data());
    uint32_t asked = static_cast<uint32_t>(storage.size());
    request->argsz = asked;
    if (RetryIoctl(fd, uapi::VFIO_IOMMU_GET_INFO, request) < 0) {
      throw ErrnoError(env, errno, "ioctl(VFIO_IOMMU_GET_INFO)");
    }
    if (request->argsz <= asked) break;
    storage.resize(request->argsz);
    std::fill(storage.begin(), storage.end(), 0);
  }
  const auto* result = reinterpret_cast<const uapi::vfio_iommu_type1_info*>(storage.data());
  Napi::Object out = Napi::Object::New(env);
  out.Set("flags", Napi::Number::New(env, result->flags));
  if (result->flags & uapi::VFIO_IOMMU_INFO_PGSIZES) out.Set("iovaPageSizes", U64Value(env, result->iova_pgsizes));
  Napi::Array ranges = Napi::Array::New(env);
  out.Set("iovaRanges", ranges);
  if (!(result->flags & uapi::VFIO_IOMMU_INFO_CAPS) || result->argsz > storage.size()) return out;
  uint32_t offset = result->cap_offset;
  // Walk the chain defensively: every header and body must lie inside what the kernel filled.
  for (int guard = 0; offset != 0 && guard < 64; guard++) {
    if (offset + sizeof(uapi::vfio_info_cap_header) > storage.size()) break;
    const auto* header = reinterpret_cast<const uapi::vfio_info_cap_header*>(storage.data() + offset);
    if (header->id == uapi::VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE && offset + sizeof(uapi::vfio_iommu_type1_info_cap_iova_range) <= storage.size()) {
      const auto* cap = reinterpret_cast<const uapi::vfio_iommu_type1_info_cap_iova_range*>(header);
      for (uint32_t i = 0; i < cap->nr_iovas; i++) {
        size_t end = offset + sizeof(*cap) + (i + 1) * sizeof(uapi::vfio_iova_range);
        if (end > storage.size()) break;
        Napi::Array range = Napi::Array::New(env, 2);
        range.Set(0u, U64Value(env, cap->iova_ranges[i].start));
        range.Set(1u, U64Value(env, cap->iova_ranges[i].end));
        ranges.Set(i, range);
      }
    } else if (header->id == uapi::VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL && offset + sizeof(uapi::vfio_iommu_type1_info_dma_avail) <= storage.size()) {
      const auto* cap = reinterpret_cast<const uapi::vfio_iommu_type1_info_dma_avail*>(header);
      out.Set("dmaAvailable", Napi::Number::New(env, cap->avail));
    }
    offset = header->next;
  }
  return out;
}

int MapDma(int fd, uint64_t vaddr, uint64_t iova, uint64_t size) {
  uapi::vfio_iommu_type1_dma_map map{};
  map.argsz = sizeof(map);
  map.flags = uapi::VFIO_DMA_MAP_FLAG_READ | uapi::VFIO_DMA_MAP_FLAG_WRITE;
  map.vaddr = vaddr;
  map.iova = iova;
  map.size = size;
  return FaultableIoctl("ioctl:VFIO_IOMMU_MAP_DMA", fd, uapi::VFIO_IOMMU_MAP_DMA, &map) < 0 ? -1 : 0;
}

// type1 removes every whole mapping inside [iova, iova + size) and answers with the bytes
// it removed (0 where there were none); it refuses (EINVAL) to split a mapping.
int UnmapDma(int fd, uint64_t iova, uint64_t size, uint64_t* unmapped) {
  uapi::vfio_iommu_type1_dma_unmap unmap{};
  unmap.argsz = sizeof(unmap);
  unmap.iova = iova;
  unmap.size = size;
  if (FaultableIoctl("ioctl:VFIO_IOMMU_UNMAP_DMA", fd, uapi::VFIO_IOMMU_UNMAP_DMA, &unmap) < 0) return -1;
  if (unmapped) *unmapped = unmap.size;
  return 0;
}

DmaOps Type1Ops(int fd) {
  return DmaOps{
      "ioctl(VFIO_IOMMU_MAP_DMA)",
      "ioctl(VFIO_IOMMU_UNMAP_DMA)",
      [fd](uint64_t vaddr, uint64_t iova, uint64_t size) { return MapDma(fd, vaddr, iova, size); },
      [fd](uint64_t iova, uint64_t size, uint64_t* unmapped) { return UnmapDma(fd, iova, size, unmapped); },
  };
}

Napi::Value MapDmaRuns(const Napi::CallbackInfo& info) {
  Args args(info);
  uint64_t granule = args.U64(2, "granule");
  return MapExtents(info.Env(), Type1Ops(args.Fd(0)), ReadExtents(info, 1, granule), granule);
}

Napi::Value UnmapDmaRuns(const Napi::CallbackInfo& info) {
  Args args(info);
  uint64_t granule = args.U64(2, "granule");
  return UnmapExtents(info.Env(), Type1Ops(args.Fd(0)), ReadExtents(info, 1, granule), granule, 0);
}

}  // namespace

void InitVfioType1(Napi::Env env, Napi::Object exports) {
  exports.Set("vfioGetApiVersion", Napi::Function::New(env, GetApiVersion));
  exports.Set("vfioCheckExtension", Napi::Function::New(env, CheckExtension));
  exports.Set("vfioSetIommu", Napi::Function::New(env, SetIommu));
  exports.Set("vfioGroupGetStatus", Napi::Function::New(env, GroupGetStatus));
  exports.Set("vfioGroupSetContainer", Napi::Function::New(env, GroupSetContainer));
  exports.Set("vfioIommuGetInfo", Napi::Function::New(env, IommuGetInfo));
  exports.Set("vfioMapDmaRuns", Napi::Function::New(env, MapDmaRuns));
  exports.Set("vfioUnmapDmaRuns", Napi::Function::New(env, UnmapDmaRuns));
}
