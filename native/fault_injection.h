// Test-only fault injection: make the Nth call of a syscall site fail with a chosen errno,
// so that the tests can drive every step of a conversion, and every undo step, to fail.
// Off unless GUESTMEM_FAULTS is set in the environment when the addon loads; then the
// addon also exports setFaults(spec) to re-arm it. A disabled site costs one branch.
#pragma once

#include <cerrno>

#include "args.h"

namespace faults {

/** True when GUESTMEM_FAULTS was set at load (the only way to turn injection on). */
bool Enabled();

/**
 * Counts a call of `site` ("ioctl:KVM_SET_MEMORY_ATTRIBUTES", "fallocate", ...) and returns
 * the errno to fail it with, or 0 to make the real call.
 */
int Check(const char* site);

}  // namespace faults

/** At the top of a syscall wrapper that returns -1 with errno: fail here if a rule says so. */
#define GUESTMEM_INJECT_FAULT(site)             \
  do {                                          \
    if (faults::Enabled()) {                    \
      if (int injected = faults::Check(site)) { \
        errno = injected;                       \
        return -1;                              \
      }                                         \
    }                                           \
  } while (0)

/** RetryIoctl that a fault rule for `site` can fail first. */
inline int FaultableIoctl(const char* site, int fd, unsigned long request, void* arg) {
  GUESTMEM_INJECT_FAULT(site);
  return RetryIoctl(fd, request, arg);
}
