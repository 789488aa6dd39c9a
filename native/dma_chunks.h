// The batched DMA map shared by type1 and iommufd: map [iova, iova + size) as consecutive
// granule-sized mappings in one crossing from JS, because neither back end can later unmap
// part of a mapping. A failure part-way unmaps the chunks already made (one unmap call over
// them, which both back ends accept) before reporting, so nothing is left half-mapped.
#pragma once

#include <cerrno>
#include <cstdint>
#include <functional>
#include <string>

#include "args.h"

struct ChunkOps {
  const char* map_syscall;
  std::function<int(uint64_t vaddr, uint64_t iova, uint64_t size)> map;   // 0 or -1/errno
  std::function<int(uint64_t iova, uint64_t size)> unmap;                 // 0 or -1/errno
};

inline Napi::Value MapChunks(Napi::Env env, const ChunkOps& ops, uint64_t vaddr, uint64_t iova, uint64_t size, uint64_t granule) {
  if (granule == 0 || size == 0 || size % granule != 0) {
    throw ArgumentError(env, "size must be a non-zero multiple of a non-zero granule");
  }
  const uint64_t chunks = size / granule;
  for (uint64_t i = 0; i < chunks; i++) {
    if (ops.map(vaddr + i * granule, iova + i * granule, granule) == 0) continue;
    int err = errno;
    Napi::Error error = ErrnoError(env, err, ops.map_syscall);
    error.Set("iova", U64Value(env, iova + i * granule));
    error.Set("size", U64Value(env, granule));
    error.Set("chunk", Napi::Number::New(env, static_cast<double>(i)));
    if (i > 0 && ops.unmap(iova, i * granule) < 0) {
      // The undo failed too: say exactly what may still be mapped.
      int undo_err = errno;
      error.Set("undoCode", Napi::String::New(env, uv_err_name(-undo_err)));
      error.Set("stillMapped", U64Value(env, i * granule));
    }
    throw error;
  }
  return Napi::Number::New(env, static_cast<double>(chunks));
}
