// The yardstick for guestmem's guest-driven round trip: a minimal VMM in C that runs the
// same guest program (dist/guest/loop.bin) the same way (long mode, identity map, boot
// info) and answers each MAP_GPA_RANGE hypercall with only the kernel work of a
// conversion: KVM_SET_MEMORY_ATTRIBUTES and the punch-hole of the other backing. No
// tracker, no listener, no JavaScript. Prints one JSON line: conversions and ns each.
// With a third argument `exits` it runs dist/guest/misbehave.bin in its stray-port mode
// instead and times bare exits (an OUT, nothing done, re-enter): the cost of a round
// trip through userspace alone. Built at bench time (`cc -O2`); not part of the package.
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

// What bookworm's headers (Linux 6.1) lack, from Linux 6.12's uAPI.
struct region2 { uint32_t slot, flags; uint64_t gpa, size, uaddr, gmem_offset; uint32_t gmem_fd, pad1; uint64_t pad2[14]; };
struct attributes { uint64_t address, size, attributes, flags; };
struct create_gmem { uint64_t size, flags, reserved[6]; };
#define SET_REGION2 _IOW(KVMIO, 0x49, struct region2)
#define SET_ATTRIBUTES _IOW(KVMIO, 0xd2, struct attributes)
#define CREATE_GMEM _IOWR(KVMIO, 0xd4, struct create_gmem)
#define MEM_GUEST_MEMFD (1u << 2)
#define ATTRIBUTE_PRIVATE (1ull << 3)
#define SW_PROTECTED_VM 1
#define CAP_EXIT_HYPERCALL 201
#define HC_MAP_GPA_RANGE 12
#define ENCRYPTED (1ull << 4)
#define PAGE 4096ull
#define MiB (1ull << 20)

static void die(const char *what) { fprintf(stderr, "c-vmm-loop: %s: %s\n", what, strerror(errno)); exit(1); }
static int xioctl(int fd, unsigned long request, void *arg, const char *what) {
  int r = ioctl(fd, request, arg);
  if (r < 0) die(what);
  return r;
}

int main(int argc, char **argv) {
  if (argc != 3 && !(argc == 4 && strcmp(argv[3], "exits") == 0)) {
    fprintf(stderr, "usage: c-vmm-loop LOOP.BIN ITERATIONS | c-vmm-loop MISBEHAVE.BIN EXITS exits\n");
    return 2;
  }
  uint64_t iterations = strtoull(argv[2], NULL, 10);
  int bare_exits = argc == 4;
  const uint64_t gpa = 16 * MiB, size = 16 * MiB, data = gpa + MiB;
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) die("open /dev/kvm");
  int vm = ioctl(kvm, KVM_CREATE_VM, SW_PROTECTED_VM);
  if (vm < 0) die("KVM_CREATE_VM");
  struct kvm_enable_cap cap = {.cap = CAP_EXIT_HYPERCALL, .args = {1ull << HC_MAP_GPA_RANGE}};
  xioctl(vm, KVM_ENABLE_CAP, &cap, "KVM_ENABLE_CAP");
  int memfd = memfd_create("c-vmm-loop", MFD_CLOEXEC);
  if (memfd < 0 || ftruncate(memfd, size) < 0) die("memfd");
  uint8_t *shared = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (shared == MAP_FAILED) die("mmap");
  struct create_gmem gm = {.size = size};
  int gmem = xioctl(vm, CREATE_GMEM, &gm, "KVM_CREATE_GUEST_MEMFD");
  struct region2 region = {.slot = 0, .flags = MEM_GUEST_MEMFD, .gpa = gpa, .size = size, .uaddr = (uint64_t)shared, .gmem_fd = (uint32_t)gmem};
  xioctl(vm, SET_REGION2, &region, "KVM_SET_USER_MEMORY_REGION2");
  // All private except the boot region (first MiB) and the data page, as guestmem leaves them.
  struct attributes priv = {.address = gpa + MiB, .size = size - MiB, .attributes = ATTRIBUTE_PRIVATE};
  xioctl(vm, SET_ATTRIBUTES, &priv, "KVM_SET_MEMORY_ATTRIBUTES");

  // Boot region at gpa: boot info, PML4, PDPT, one PD (2 MiB pages over the first GiB), program, stack.
  uint64_t *boot = (uint64_t *)shared;
  boot[0] = 0x4d454d5453455547ull;
  boot[1] = bare_exits ? 2 : 0; // misbehave's stray-port mode
  boot[2] = iterations;
  boot[3] = data;
  boot[4] = 1;
  uint64_t *pml4 = (uint64_t *)(shared + PAGE), *pdpt = (uint64_t *)(shared + 2 * PAGE), *pd = (uint64_t *)(shared + 3 * PAGE);
  pml4[0] = (gpa + 2 * PAGE) | 3;
  pdpt[0] = (gpa + 3 * PAGE) | 3;
  for (int i = 0; i < 512; i++) pd[i] = ((uint64_t)i << 21) | 0x83;
  FILE *image = fopen(argv[1], "rb");
  if (!image) die(argv[1]);
  size_t length = fread(shared + 4 * PAGE, 1, 64 * 1024, image);
  fclose(image);
  if (length == 0) die("empty program");

  int vcpu = xioctl(vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU");
  int run_size = xioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");
  struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) die("mmap kvm_run");
  struct { struct kvm_cpuid2 header; struct kvm_cpuid_entry2 entries[256]; } cpuid = {.header.nent = 256};
  xioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid, "KVM_GET_SUPPORTED_CPUID");
  xioctl(vcpu, KVM_SET_CPUID2, &cpuid, "KVM_SET_CPUID2");
  struct kvm_sregs sregs;
  xioctl(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
  struct kvm_segment code = {.limit = 0xffffffff, .selector = 8, .type = 11, .present = 1, .s = 1, .l = 1, .g = 1};
  struct kvm_segment seg = {.limit = 0xffffffff, .selector = 16, .type = 3, .present = 1, .s = 1, .db = 1, .g = 1};
  sregs.cs = code;
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = seg;
  sregs.tr.base = 0, sregs.tr.limit = 0x67, sregs.tr.selector = 0x18, sregs.tr.type = 11, sregs.tr.present = 1, sregs.tr.s = 0, sregs.tr.unusable = 0;
  sregs.cr0 = 0x80010033, sregs.cr3 = gpa + PAGE, sregs.cr4 = 0x20, sregs.efer = 0x500;
  xioctl(vcpu, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");
  struct kvm_regs regs = {.rip = gpa + 4 * PAGE, .rsp = gpa + MiB - 16, .rdi = gpa, .rdx = 1, .rflags = 2};
  xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");

  uint64_t conversions = 0;
  struct timespec start, end;
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (;;) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0 && errno != EINTR) die("KVM_RUN");
    if (run->exit_reason == KVM_EXIT_HYPERCALL && run->hypercall.nr == HC_MAP_GPA_RANGE) {
      uint64_t at = run->hypercall.args[0], bytes = run->hypercall.args[1] * PAGE;
      int to_private = (run->hypercall.args[2] & ENCRYPTED) != 0;
      struct attributes change = {.address = at, .size = bytes, .attributes = to_private ? ATTRIBUTE_PRIVATE : 0};
      xioctl(vm, SET_ATTRIBUTES, &change, "KVM_SET_MEMORY_ATTRIBUTES");
      if (fallocate(to_private ? memfd : gmem, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(at - gpa), (off_t)bytes) < 0) die("fallocate");
      run->hypercall.ret = 0;
      conversions++;
    } else if (bare_exits && run->exit_reason == KVM_EXIT_IO && run->io.port == 0x80) {
      if (++conversions == iterations) break;
    } else if (run->exit_reason == KVM_EXIT_IO && run->io.port == 0xeb) {
      uint32_t status = *(uint32_t *)((uint8_t *)run + run->io.data_offset);
      if (status != 0) { fprintf(stderr, "c-vmm-loop: the guest exited %u\n", status); return 1; }
      break;
    } else {
      fprintf(stderr, "c-vmm-loop: unexpected exit %u\n", run->exit_reason);
      return 1;
    }
  }
  clock_gettime(CLOCK_MONOTONIC, &end);
  double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
  printf("{\"%s\":%llu,\"nsPer\":%.0f}\n", bare_exits ? "exits" : "conversions", (unsigned long long)conversions, ns / (double)conversions);
  return 0;
}
