// The yardstick for a bare exit on the vCPU's own thread: a minimal VMM in C that runs a
// default-type VM (no guest_memfd, no attributes: what the machines' own /dev/kvm runs on
// their real cores) whose one vCPU, in real mode at 0x1000, loops on `out 0x10, al; jmp
// back`. Each exit is counted and the vCPU re-enters; WARMUP exits first, then EXITS timed.
// Prints one JSON line: {"exits":N,"nsPer":X}. Built at bench time (`cc -O2`); the same
// guest as lib/cli/exit-bench.ts runs, so the two are timed on the same work.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) { fprintf(stderr, "c-exit-loop: %s: %s\n", what, strerror(errno)); exit(1); }
static int xioctl(int fd, unsigned long request, void *arg, const char *what) {
  int r = ioctl(fd, request, arg);
  if (r < 0) die(what);
  return r;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: c-exit-loop EXITS WARMUP\n");
    return 2;
  }
  uint64_t exits = strtoull(argv[1], NULL, 10), warmup = strtoull(argv[2], NULL, 10);
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) die("open /dev/kvm");
  int vm = xioctl(kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");
  const uint64_t size = 0x10000;
  uint8_t *memory = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) die("mmap");
  static const uint8_t code[] = {0xe6, 0x10, 0xeb, 0xfc}; // out 0x10, al; jmp back
  memcpy(memory + 0x1000, code, sizeof code);
  struct kvm_userspace_memory_region region = {.slot = 0, .guest_phys_addr = 0, .memory_size = size, .userspace_addr = (uint64_t)memory};
  xioctl(vm, KVM_SET_USER_MEMORY_REGION, &region, "KVM_SET_USER_MEMORY_REGION");
  int vcpu = xioctl(vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU");
  int run_size = xioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");
  struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) die("mmap kvm_run");
  struct kvm_sregs sregs;
  xioctl(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
  sregs.cs.base = 0, sregs.cs.selector = 0;
  xioctl(vcpu, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");
  struct kvm_regs regs = {.rip = 0x1000, .rflags = 2};
  xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");

  struct timespec start = {0}, end;
  for (uint64_t n = 0; n < warmup + exits; n++) {
    if (n == warmup) clock_gettime(CLOCK_MONOTONIC, &start);
    if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
    if (run->exit_reason != KVM_EXIT_IO || run->io.port != 0x10) {
      fprintf(stderr, "c-exit-loop: unexpected exit %u\n", run->exit_reason);
      return 1;
    }
  }
  clock_gettime(CLOCK_MONOTONIC, &end);
  double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
  printf("{\"exits\":%llu,\"nsPer\":%.0f}\n", (unsigned long long)exits, ns / (double)exits);
  return 0;
}
