// Batched DMA mapping, shared by type1 and iommufd. A batch is a list of extents (vaddr,
// iova, size: TypeScript's DmaExtent) that one conversion maps or unmaps, handled in one
// crossing from JS. Each extent is mapped as consecutive granule-sized mappings, because
// neither back end can later unmap part of a mapping; an extent is unmapped with one call,
// which both accept over many whole mappings. A batch is all or nothing: a failure part-way undoes what the batch did before
// reporting, so nothing is left half-mapped (or half-unmapped).
#pragma once

#include <cerrno>
#include <cstdint>
#include <functional>
#include <vector>

#include "args.h"

struct DmaOps {
  const char* map_syscall;
  const char* unmap_syscall;
  std::function<int(uint64_t vaddr, uint64_t iova, uint64_t size)> map;        // 0, or -1 and errno
  std::function<int(uint64_t iova, uint64_t size, uint64_t* unmapped)> unmap;  // 0, or -1 and errno
};

struct DmaExtent {
  uint64_t vaddr;
  uint64_t iova;
  uint64_t size;
};

/** Extents from a BigUint64Array of (vaddr, iova, size) triples. */
inline std::vector<DmaExtent> ReadExtents(const Napi::CallbackInfo& info, size_t index, uint64_t granule) {
  Napi::Value value = info[index];
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array) {
    throw ArgumentError(info.Env(), "extents must be a BigUint64Array of (vaddr, iova, size) triples");
  }
  auto array = value.As<Napi::TypedArrayOf<uint64_t>>();
  if (array.ElementLength() % 3 != 0) throw ArgumentError(info.Env(), "extents must hold whole (vaddr, iova, size) triples");
  if (granule == 0) throw OutOfRangeError(info.Env(), "granule must be greater than zero");
  std::vector<DmaExtent> extents;
  for (size_t i = 0; i < array.ElementLength(); i += 3) {
    DmaExtent extent{array[i], array[i + 1], array[i + 2]};
    if (extent.size == 0 || extent.size % granule != 0)
      throw OutOfRangeError(info.Env(), "each extent's size must be a non-zero multiple of the granule");
    extents.push_back(extent);
  }
  return extents;
}

/** Maps the first `chunks` granules of an extent; returns how many it mapped before a failure. */
inline uint64_t MapExtentChunks(const DmaOps& ops, const DmaExtent& extent, uint64_t granule, uint64_t chunks) {
  for (uint64_t i = 0; i < chunks; i++) {
    if (ops.map(extent.vaddr + i * granule, extent.iova + i * granule, granule) < 0) return i;
  }
  return chunks;
}

/** (iova, size) pairs as a BigUint64Array: the exact ranges an error leaves in a given state. */
inline Napi::Value RangeList(Napi::Env env, const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  auto list = Napi::BigUint64Array::New(env, ranges.size() * 2);
  for (size_t i = 0; i < ranges.size(); i++) {
    list[i * 2] = ranges[i].first;
    list[i * 2 + 1] = ranges[i].second;
  }
  return list;
}

/**
 * Maps every extent at the granule; returns the number of mappings made. On a failure the
 * batch's mappings are unmapped again, newest first; any range whose unmap also failed is
 * named in the error's `stillMapped` ((iova, size) pairs): the caller must know that the
 * device can still reach it.
 */
inline Napi::Value MapExtents(Napi::Env env, const DmaOps& ops, const std::vector<DmaExtent>& extents, uint64_t granule) {
  uint64_t made = 0;
  for (size_t r = 0; r < extents.size(); r++) {
    const DmaExtent& extent = extents[r];
    uint64_t chunks = extent.size / granule;
    uint64_t done = MapExtentChunks(ops, extent, granule, chunks);
    made += done;
    if (done == chunks) continue;
    int err = errno;
    Napi::Error error = ErrnoError(env, err, ops.map_syscall);
    error.Set("iova", U64Value(env, extent.iova + done * granule));
    error.Set("size", U64Value(env, granule));
    error.Set("chunk", Napi::Number::New(env, static_cast<double>(made)));
    // Undo, newest first: the part of this extent, then the extents before it.
    std::vector<std::pair<uint64_t, uint64_t>> still_mapped;
    if (done > 0 && ops.unmap(extent.iova, done * granule, nullptr) < 0) still_mapped.emplace_back(extent.iova, done * granule);
    for (size_t p = r; p-- > 0;) {
      if (ops.unmap(extents[p].iova, extents[p].size, nullptr) < 0) still_mapped.emplace_back(extents[p].iova, extents[p].size);
    }
    if (!still_mapped.empty()) error.Set("stillMapped", RangeList(env, still_mapped));
    throw error;
  }
  return Napi::Number::New(env, static_cast<double>(made));
}

/**
 * Unmaps every extent with one call each; returns the bytes unmapped. `absent_errno` (iommufd's
 * ENOENT) marks an extent with nothing mapped, which a double discard may send: it counts as 0.
 * On another failure the extents already unmapped are mapped again where they were wholly
 * mapped before (the bytes unmapped say so); what stays unmapped (an extent that was partly
 * mapped, or the rest of an extent whose remap failed) is named in the error's `notRestored`
 * ((iova, size) pairs). The failing extent itself is as it was.
 */
inline Napi::Value UnmapExtents(Napi::Env env, const DmaOps& ops, const std::vector<DmaExtent>& extents, uint64_t granule, int absent_errno) {
  uint64_t total = 0;
  std::vector<uint64_t> unmapped(extents.size(), 0);
  for (size_t r = 0; r < extents.size(); r++) {
    if (ops.unmap(extents[r].iova, extents[r].size, &unmapped[r]) == 0) {
      total += unmapped[r];
      continue;
    }
    int err = errno;
    if (absent_errno != 0 && err == absent_errno) continue;
    Napi::Error error = ErrnoError(env, err, ops.unmap_syscall);
    error.Set("iova", U64Value(env, extents[r].iova));
    error.Set("size", U64Value(env, extents[r].size));
    std::vector<std::pair<uint64_t, uint64_t>> not_restored;
    for (size_t p = r; p-- > 0;) {
      if (unmapped[p] == 0) continue;
      if (unmapped[p] != extents[p].size) {
        not_restored.emplace_back(extents[p].iova, extents[p].size);
        continue;
      }
      uint64_t chunks = extents[p].size / granule;
      uint64_t remapped = MapExtentChunks(ops, extents[p], granule, chunks);
      if (remapped != chunks) not_restored.emplace_back(extents[p].iova + remapped * granule, (chunks - remapped) * granule);
    }
    if (!not_restored.empty()) error.Set("notRestored", RangeList(env, not_restored));
    throw error;
  }
  return U64Value(env, total);
}
