// Memory files: memfd_create, ftruncate (past 2^53 too), fallocate (punch-hole/allocate,
// for the shared memfd and for guest_memfd alike), and fd dup. Mapping them is mapping.cc.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "args.h"
#include "fault_injection.h"

namespace {

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Args args(info);
  std::string name = args.String(0, "name");
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC);
  if (fd < 0) throw ErrnoError(info.Env(), errno, "memfd_create");
  return Napi::Number::New(info.Env(), fd);
}

int FaultableFallocate(int fd, int mode, off_t offset, off_t length) {
  GUESTMEM_INJECT_FAULT("fallocate");
  int result;
  do {
    result = fallocate(fd, mode, offset, length);
  } while (result < 0 && errno == EINTR);
  return result;
}

int FaultableMadvise(void* address, size_t length, int advice) {
  GUESTMEM_INJECT_FAULT("madvise");
  return madvise(address, length, advice);
}

Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  Args args(info);
  int fd = args.Fd(0);
  int mode = static_cast<int>(args.U32(1, "mode"));
  off_t offset = static_cast<off_t>(args.U64(2, "offset"));
  off_t length = static_cast<off_t>(args.U64(3, "length"));
  if (FaultableFallocate(fd, mode, offset, length) < 0) throw ErrnoError(info.Env(), errno, "fallocate");
  return info.Env().Undefined();
}

Napi::Value Ftruncate(const Napi::CallbackInfo& info) {
  Args args(info);
  int fd = args.Fd(0);
  uint64_t length = args.U64(1, "length");
  if (length > static_cast<uint64_t>(INT64_MAX)) {
    Napi::RangeError error = Napi::RangeError::New(info.Env(), "length must be below 2^63");
    error.Set("code", Napi::String::New(info.Env(), "ERR_OUT_OF_RANGE"));
    throw error;
  }
  int result;
  do {
    result = ftruncate(fd, static_cast<off_t>(length));
  } while (result < 0 && errno == EINTR);
  if (result < 0) throw ErrnoError(info.Env(), errno, "ftruncate");
  return info.Env().Undefined();
}

// Gives back the pages of a range of memory known only by its address (a borrowed mapping):
// MADV_REMOVE for shared memory (the file's pages go, as a punch-hole would), MADV_DONTNEED
// for private anonymous memory. The TS side checks first that the range is a shared
// read-write mapping of this process (never the heap).
Napi::Value Madvise(const Napi::CallbackInfo& info) {
  Args args(info);
  uint64_t address = args.U64(0, "address");
  uint64_t length = args.U64(1, "length");
  uint32_t advice = args.U32(2, "advice");
  if (advice != MADV_REMOVE && advice != MADV_DONTNEED) throw ArgumentError(info.Env(), "advice must be MADV_REMOVE or MADV_DONTNEED");
  if (FaultableMadvise(reinterpret_cast<void*>(address), static_cast<size_t>(length), static_cast<int>(advice)) < 0) {
    throw ErrnoError(info.Env(), errno, advice == MADV_REMOVE ? "madvise(MADV_REMOVE)" : "madvise(MADV_DONTNEED)");
  }
  return info.Env().Undefined();
}

Napi::Value DupCloexec(const Napi::CallbackInfo& info) {
  Args args(info);
  int fd = fcntl(args.Fd(0), F_DUPFD_CLOEXEC, 3);
  if (fd < 0) throw ErrnoError(info.Env(), errno, "fcntl(F_DUPFD_CLOEXEC)");
  return Napi::Number::New(info.Env(), fd);
}

}  // namespace

void InitMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate));
  exports.Set("fallocate", Napi::Function::New(env, Fallocate));
  exports.Set("ftruncate", Napi::Function::New(env, Ftruncate));
  exports.Set("dupCloexec", Napi::Function::New(env, DupCloexec));
  exports.Set("madvise", Napi::Function::New(env, Madvise));
}
