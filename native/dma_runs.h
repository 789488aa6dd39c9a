// Batched DMA mapping, shared by type1 and iommufd. A batch is a list of runs (vaddr, iova,
// size) that one conversion maps or unmaps, handled in one crossing from JS. Each run is
// mapped as consecutive granule-sized mappings, because neither back end can later unmap
// part of a mapping; a run is unmapped with one call, which both accept over many whole
// mappings. A batch is all or nothing: a failure part-way undoes what the batch did before
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

struct DmaRun {
  uint64_t vaddr;
  uint64_t iova;
  uint64_t size;
};

/** Runs from a BigUint64Array of (vaddr, iova, size) triples. */
inline std::vector<DmaRun> ReadRuns(const Napi::CallbackInfo& info, size_t index, uint64_t granule) {
  Napi::Value value = info[index];
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array) {
    throw ArgumentError(info.Env(), "runs must be a BigUint64Array of (vaddr, iova, size) triples");
  }
  auto array = value.As<Napi::TypedArrayOf<uint64_t>>();
  if (array.ElementLength() % 3 != 0) throw ArgumentError(info.Env(), "runs must hold whole (vaddr, iova, size) triples");
  if (granule == 0) throw ArgumentError(info.Env(), "granule must be greater than zero");
  std::vector<DmaRun> runs;
  for (size_t i = 0; i < array.ElementLength(); i += 3) {
    DmaRun run{array[i], array[i + 1], array[i + 2]};
    if (run.size == 0 || run.size % granule != 0) throw ArgumentError(info.Env(), "each run's size must be a non-zero multiple of the granule");
    runs.push_back(run);
  }
  return runs;
}

/** Maps the first `chunks` granules of a run; returns how many it mapped before a failure. */
inline uint64_t MapRunChunks(const DmaOps& ops, const DmaRun& run, uint64_t granule, uint64_t chunks) {
  for (uint64_t i = 0; i < chunks; i++) {
    if (ops.map(run.vaddr + i * granule, run.iova + i * granule, granule) < 0) return i;
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
 * Maps every run at the granule; returns the number of mappings made. On a failure the
 * batch's mappings are unmapped again, newest first; any range whose unmap also failed is
 * named in the error's `stillMapped` ((iova, size) pairs): the caller must know that the
 * device can still reach it.
 */
inline Napi::Value MapRuns(Napi::Env env, const DmaOps& ops, const std::vector<DmaRun>& runs, uint64_t granule) {
  uint64_t made = 0;
  for (size_t r = 0; r < runs.size(); r++) {
    const DmaRun& run = runs[r];
    uint64_t chunks = run.size / granule;
    uint64_t done = MapRunChunks(ops, run, granule, chunks);
    made += done;
    if (done == chunks) continue;
    int err = errno;
    Napi::Error error = ErrnoError(env, err, ops.map_syscall);
    error.Set("iova", U64Value(env, run.iova + done * granule));
    error.Set("size", U64Value(env, granule));
    error.Set("chunk", Napi::Number::New(env, static_cast<double>(made)));
    // Undo, newest first: the part of this run, then the runs before it.
    std::vector<std::pair<uint64_t, uint64_t>> still_mapped;
    if (done > 0 && ops.unmap(run.iova, done * granule, nullptr) < 0) still_mapped.emplace_back(run.iova, done * granule);
    for (size_t p = r; p-- > 0;) {
      if (ops.unmap(runs[p].iova, runs[p].size, nullptr) < 0) still_mapped.emplace_back(runs[p].iova, runs[p].size);
    }
    if (!still_mapped.empty()) error.Set("stillMapped", RangeList(env, still_mapped));
    throw error;
  }
  return Napi::Number::New(env, static_cast<double>(made));
}

/**
 * Unmaps every run with one call each; returns the bytes unmapped. `absent_errno` (iommufd's
 * ENOENT) marks a run with nothing mapped, which a double discard may send: it counts as 0.
 * On another failure the runs already unmapped are mapped again where they were wholly
 * mapped before (the bytes unmapped say so); what stays unmapped (a run that was partly
 * mapped, or the rest of a run whose remap failed) is named in the error's `notRestored`
 * ((iova, size) pairs). The failing run itself is as it was.
 */
inline Napi::Value UnmapRuns(Napi::Env env, const DmaOps& ops, const std::vector<DmaRun>& runs, uint64_t granule, int absent_errno) {
  uint64_t total = 0;
  std::vector<uint64_t> unmapped(runs.size(), 0);
  for (size_t r = 0; r < runs.size(); r++) {
    if (ops.unmap(runs[r].iova, runs[r].size, &unmapped[r]) == 0) {
      total += unmapped[r];
      continue;
    }
    int err = errno;
    if (absent_errno != 0 && err == absent_errno) continue;
    Napi::Error error = ErrnoError(env, err, ops.unmap_syscall);
    error.Set("iova", U64Value(env, runs[r].iova));
    error.Set("size", U64Value(env, runs[r].size));
    std::vector<std::pair<uint64_t, uint64_t>> not_restored;
    for (size_t p = r; p-- > 0;) {
      if (unmapped[p] == 0) continue;
      if (unmapped[p] != runs[p].size) {
        not_restored.emplace_back(runs[p].iova, runs[p].size);
        continue;
      }
      uint64_t chunks = runs[p].size / granule;
      uint64_t remapped = MapRunChunks(ops, runs[p], granule, chunks);
      if (remapped != chunks) not_restored.emplace_back(runs[p].iova + remapped * granule, (chunks - remapped) * granule);
    }
    if (!not_restored.empty()) error.Set("notRestored", RangeList(env, not_restored));
    throw error;
  }
  return U64Value(env, total);
}
