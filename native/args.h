// Argument readers for the native functions. The TypeScript layer validates meaning
// (alignment, ranges, open fds); these only make sure a wrong type can never reach a
// syscall as garbage, throwing a TypeError instead.
#pragma once

#include <napi.h>

#include <sys/ioctl.h>
#include <cerrno>
#include <cstdint>
#include <string>

#include "errors.h"

/**
 * A 64-bit unsigned value from a non-negative safe-integer number or a bigint, for an
 * argument or an object's field alike; naming `name` otherwise, a TypeError for the wrong type
 * and a RangeError for a value out of range (negative, a fraction, past 2^64).
 */
inline uint64_t U64FromValue(Napi::Env env, Napi::Value value, const std::string& name) {
  if (value.IsBigInt()) {
    bool lossless = false;
    uint64_t result = value.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw OutOfRangeError(env, name + " does not fit in 64 bits unsigned");
    return result;
  }
  if (!value.IsNumber()) throw ArgumentError(env, name + " must be a number");
  double number = value.As<Napi::Number>().DoubleValue();
  if (number != static_cast<double>(static_cast<int64_t>(number)) || number > 9007199254740991.0 || number < -9007199254740991.0) {
    throw OutOfRangeError(env, name + " must be a safe integer");
  }
  if (number < 0) throw OutOfRangeError(env, name + " must not be negative");
  return static_cast<uint64_t>(number);
}

class Args {
 public:
  explicit Args(const Napi::CallbackInfo& info) : info_(info) {}

  int Fd(size_t index) const {
    int64_t value = Int(index, "fd");
    if (value < 0 || value > INT32_MAX) throw OutOfRangeError(info_.Env(), "fd must be a non-negative int32");
    return static_cast<int>(value);
  }

  /** An unsigned 32-bit number. */
  uint32_t U32(size_t index, const char* name) const {
    int64_t value = Int(index, name);
    if (value < 0 || value > UINT32_MAX) throw OutOfRangeError(info_.Env(), std::string(name) + " must be a uint32");
    return static_cast<uint32_t>(value);
  }

  /** A 64-bit unsigned value from a non-negative safe-integer number or a bigint. */
  uint64_t U64(size_t index, const char* name) const { return U64FromValue(info_.Env(), info_[index], name); }

  std::string String(size_t index, const char* name) const {
    if (!info_[index].IsString()) throw ArgumentError(info_.Env(), std::string(name) + " must be a string");
    return info_[index].As<Napi::String>().Utf8Value();
  }

 private:
  int64_t Int(size_t index, const char* name) const {
    Napi::Value value = info_[index];
    if (!value.IsNumber()) throw ArgumentError(info_.Env(), std::string(name) + " must be a number");
    double number = value.As<Napi::Number>().DoubleValue();
    if (number != static_cast<double>(static_cast<int64_t>(number)) || number > 9007199254740991.0 || number < -9007199254740991.0) {
      throw OutOfRangeError(info_.Env(), std::string(name) + " must be a safe integer");
    }
    return static_cast<int64_t>(number);
  }

  const Napi::CallbackInfo& info_;
};

/** ioctl, restarted on EINTR. Returns the result, or -1 with errno set. */
inline int RetryIoctl(int fd, unsigned long request, void* arg) {
  int result;
  do {
    result = ioctl(fd, request, arg);
  } while (result < 0 && errno == EINTR);
  return result;
}

/** ioctl with an integer argument, restarted on EINTR. */
inline int RetryIoctlInt(int fd, unsigned long request, unsigned long arg) {
  int result;
  do {
    result = ioctl(fd, request, arg);
  } while (result < 0 && errno == EINTR);
  return result;
}

inline Napi::BigInt U64Value(Napi::Env env, uint64_t value) {
  return Napi::BigInt::New(env, value);
}
