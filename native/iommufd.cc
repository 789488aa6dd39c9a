// iommufd: IOAS allocation, its usable IOVA ranges, and map/unmap at fixed IOVAs.
#include <vector>

#include "args.h"
#include "dma_extents.h"
#include "fault_injection.h"
#include "uapi.h"

namespace {

Napi::Value IoasAlloc(const Napi::CallbackInfo& info) {
  Args args(info);
  uapi::iommu_ioas_alloc request{};
  request.size = sizeof(request);
  if (RetryIoctl(args.Fd(0), uapi::IOMMU_IOAS_ALLOC, &request) < 0) {
    throw ErrnoError(info.Env(), errno, "ioctl(IOMMU_IOAS_ALLOC)");
  }
  return Napi::Number::New(info.Env(), request.out_ioas_id);
}

// The kernel answers EMSGSIZE with the number of ranges when the array is too small:
// ask with none, then with room for what it said (it may change between the two calls).
Napi::Value IoasIovaRanges(const Napi::CallbackInfo& info) {
  Args args(info);
  int fd = args.Fd(0);
  Napi::Env env = info.Env();
  uapi::iommu_ioas_iova_ranges request{};
  std::vector<uapi::iommu_iova_range> ranges;
  for (int attempt = 0; attempt < 4; attempt++) {
    request.size = sizeof(request);
    request.ioas_id = args.U32(1, "ioasId");
    request.num_iovas = static_cast<uint32_t>(ranges.size());
    request.allowed_iovas = reinterpret_cast<uint64_t>(ranges.data());
    if (RetryIoctl(fd, uapi::IOMMU_IOAS_IOVA_RANGES, &request) == 0) break;
    if (errno != EMSGSIZE || attempt == 3) throw ErrnoError(env, errno, "ioctl(IOMMU_IOAS_IOVA_RANGES)");
    ranges.assign(request.num_iovas, uapi::iommu_iova_range{});
  }
  Napi::Array list = Napi::Array::New(env);
  for (uint32_t i = 0; i < request.num_iovas && i < ranges.size(); i++) {
    Napi::Array range = Napi::Array::New(env, 2);
    range.Set(0u, U64Value(env, ranges[i].start));
    range.Set(1u, U64Value(env, ranges[i].last));
    list.Set(i, range);
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("ranges", list);
  out.Set("alignment", U64Value(env, request.out_iova_alignment));
  return out;
}

int IoasMap(int fd, uint32_t ioas, uint64_t vaddr, uint64_t iova, uint64_t size) {
  uapi::iommu_ioas_map map{};
  map.size = sizeof(map);
  map.flags = uapi::IOMMU_IOAS_MAP_FIXED_IOVA | uapi::IOMMU_IOAS_MAP_READABLE | uapi::IOMMU_IOAS_MAP_WRITEABLE;
  map.ioas_id = ioas;
  map.user_va = vaddr;
  map.length = size;
  map.iova = iova;
  return FaultableIoctl("ioctl:IOMMU_IOAS_MAP", fd, uapi::IOMMU_IOAS_MAP, &map) < 0 ? -1 : 0;
}

int IoasUnmap(int fd, uint32_t ioas, uint64_t iova, uint64_t size, uint64_t* unmapped) {
  uapi::iommu_ioas_unmap unmap{};
  unmap.size = sizeof(unmap);
  unmap.ioas_id = ioas;
  unmap.iova = iova;
  unmap.length = size;
  if (FaultableIoctl("ioctl:IOMMU_IOAS_UNMAP", fd, uapi::IOMMU_IOAS_UNMAP, &unmap) < 0) return -1;
  if (unmapped) *unmapped = unmap.length;
  return 0;
}

DmaOps IoasOps(int fd, uint32_t ioas) {
  return DmaOps{
      "ioctl(IOMMU_IOAS_MAP)",
      "ioctl(IOMMU_IOAS_UNMAP)",
      [fd, ioas](uint64_t vaddr, uint64_t iova, uint64_t size) { return IoasMap(fd, ioas, vaddr, iova, size); },
      [fd, ioas](uint64_t iova, uint64_t size, uint64_t* unmapped) { return IoasUnmap(fd, ioas, iova, size, unmapped); },
  };
}

Napi::Value IoasMapRuns(const Napi::CallbackInfo& info) {
  Args args(info);
  uint64_t granule = args.U64(3, "granule");
  return MapExtents(info.Env(), IoasOps(args.Fd(0), args.U32(1, "ioasId")), ReadExtents(info, 2, granule), granule);
}

// iommufd refuses (ENOENT) to split a mapping, and answers ENOENT too for a range with
// nothing mapped: with absentOk that counts as 0 bytes (a double discard), else it throws.
Napi::Value IoasUnmapRuns(const Napi::CallbackInfo& info) {
  Args args(info);
  uint64_t granule = args.U64(3, "granule");
  int absent = info[4].ToBoolean() ? ENOENT : 0;
  return UnmapExtents(info.Env(), IoasOps(args.Fd(0), args.U32(1, "ioasId")), ReadExtents(info, 2, granule), granule, absent);
}

}  // namespace

void InitIommufd(Napi::Env env, Napi::Object exports) {
  exports.Set("iommufdIoasAlloc", Napi::Function::New(env, IoasAlloc));
  exports.Set("iommufdIoasIovaRanges", Napi::Function::New(env, IoasIovaRanges));
  exports.Set("iommufdIoasMapRuns", Napi::Function::New(env, IoasMapRuns));
  exports.Set("iommufdIoasUnmapRuns", Napi::Function::New(env, IoasUnmapRuns));
}
