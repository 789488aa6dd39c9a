// A failed syscall as Node's fs reports one: message "EINVAL: invalid argument,
// ioctl(KVM_SET_MEMORY_ATTRIBUTES)", with `errno` (negative, as libuv's), `code` and
// `syscall`, plus whatever facts the caller adds (the range, the chunk that failed).
#pragma once

#include <napi.h>
#include <uv.h>

#include <cstring>
#include <string>

inline Napi::Error ErrnoError(Napi::Env env, int err, const std::string& syscall) {
  const char* code = uv_err_name(-err);
  // strerror, not uv_strerror: libuv words EOPNOTSUPP (= ENOTSUP on Linux, the code
  // Node gives it) as "operation not supported on socket", which misleads for a file.
  std::string message = std::string(code) + ": " + strerror(err) + ", " + syscall;
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("errno", Napi::Number::New(env, -err));
  error.Set("code", Napi::String::New(env, code));
  error.Set("syscall", Napi::String::New(env, syscall));
  return error;
}

inline Napi::TypeError ArgumentError(Napi::Env env, const std::string& message) {
  Napi::TypeError error = Napi::TypeError::New(env, message);
  error.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_TYPE"));
  return error;
}
