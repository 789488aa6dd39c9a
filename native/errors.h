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

/** The wrong type (not a number, not a string): a TypeError with Node's ERR_INVALID_ARG_TYPE. */
inline Napi::TypeError ArgumentError(Napi::Env env, const std::string& message) {
  Napi::TypeError error = Napi::TypeError::New(env, message);
  error.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_TYPE"));
  return error;
}

/**
 * The right type, a value outside what it may be (negative, a fraction, NaN, past 2^64 or a
 * field's width): a RangeError with Node's ERR_OUT_OF_RANGE, as Node's own validators give.
 */
inline Napi::RangeError OutOfRangeError(Napi::Env env, const std::string& message) {
  Napi::RangeError error = Napi::RangeError::New(env, message);
  error.Set("code", Napi::String::New(env, "ERR_OUT_OF_RANGE"));
  return error;
}
