// A minimal existing VMM that hands its guest memory to guestmem. It creates the VM (a
// SW-protected one by default), the guest RAM (a memfd), the private memory (a
// guest_memfd) and a memslot joining them, as QEMU would; then it starts a Node child that
// converts through guestmem with the VFIO listener, handing it the fds (inherited):
//
//   fd 3  the memfd (the block starts 1 MiB into it)
//   fd 4  the guest_memfd (the block starts 2 MiB into it)
//   fd 5  the VM fd: only to show that the child cannot use it (KVM answers VM ioctls from
//         any process but the VM's creator with EIO)
//   fd 6  requests from the child: "attr <gpa> <size> <attributes>\n" (hex), "done <json>\n"
//   fd 7  answers to the child: "0\n", or "-<errno>\n"
//
// The VMM makes the memory-attribute changes the child asks for (KVM_SET_MEMORY_ATTRIBUTES),
// since only it may, and afterwards checks what the child did through its own mapping of
// the memfd: the pattern the child wrote where the memory is shared, zeroes where it was
// made private again (the punch-hole freed those pages), and the attribute requests in the
// order the conversions need. Prints one line per check and exits 0 if all hold.
//
// Build: cc -O2 -Wall -o vmm vmm.c. Run (root, on a host with SW-protected VMs):
//   ./vmm [--vm-type N] [--vfio BDF] [--node PATH] [--converter PATH]
// (the child is converter.js next to the binary unless --converter says where).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

// What bookworm's headers (Linux 6.1) lack, from Linux 6.12's uAPI (guestmem's native/uapi.h
// pins the same structs with static_assert).
struct region2 { uint32_t slot, flags; uint64_t gpa, size, uaddr, gmem_offset; uint32_t gmem_fd, pad1; uint64_t pad2[14]; };
struct attributes { uint64_t address, size, attributes, flags; };
struct create_gmem { uint64_t size, flags, reserved[6]; };
_Static_assert(sizeof(struct region2) == 160, "kvm_userspace_memory_region2");
_Static_assert(sizeof(struct attributes) == 32, "kvm_memory_attributes");
_Static_assert(sizeof(struct create_gmem) == 64, "kvm_create_guest_memfd");
#define SET_REGION2 _IOW(KVMIO, 0x49, struct region2)
#define SET_ATTRIBUTES _IOW(KVMIO, 0xd2, struct attributes)
#define CREATE_GMEM _IOWR(KVMIO, 0xd4, struct create_gmem)
#define MEM_GUEST_MEMFD (1u << 2)
#define ATTRIBUTE_PRIVATE (1ull << 3)
#define KiB (1ull << 10)
#define MiB (1ull << 20)

// The guest RAM this VMM hands over, and what the child does with it (converter.js agrees).
#define SLOT 5
#define GPA (16 * MiB)
#define BLOCK (2 * MiB)
#define MEMFD_SIZE (4 * MiB)
#define MEMFD_OFFSET (1 * MiB)
#define GMEM_SIZE (4 * MiB)
#define GMEM_OFFSET (2 * MiB)
#define SHARED_LEN (256 * KiB)
#define PRIVATE_OFF (64 * KiB)
#define PRIVATE_LEN (64 * KiB)
#define PATTERN 0xa5

static int failures;
static void die(const char *what) { fprintf(stderr, "vmm: %s: %s\n", what, strerror(errno)); exit(1); }
static void check(int ok, const char *what) {
  printf("vmm: %s %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) failures++;
}

/** Every byte of [off, off + len) of the block, seen through the VMM's own mapping, equals value. */
static int all_bytes(const uint8_t *block, uint64_t off, uint64_t len, uint8_t value) {
  for (uint64_t i = 0; i < len; i++) if (block[off + i] != value) return 0;
  return 1;
}

int main(int argc, char **argv) {
  unsigned long vm_type = 1;  // KVM_X86_SW_PROTECTED_VM
  const char *vfio = NULL, *node = "node", *converter_path = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--vm-type") == 0 && i + 1 < argc) vm_type = strtoul(argv[++i], NULL, 0);
    else if (strcmp(argv[i], "--vfio") == 0 && i + 1 < argc) vfio = argv[++i];
    else if (strcmp(argv[i], "--node") == 0 && i + 1 < argc) node = argv[++i];
    else if (strcmp(argv[i], "--converter") == 0 && i + 1 < argc) converter_path = argv[++i];
    else { fprintf(stderr, "usage: vmm [--vm-type N] [--vfio BDF] [--node PATH] [--converter PATH]\n"); return 2; }
  }

  // The VMM's own setup, before guestmem is involved.
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) die("open /dev/kvm");
  int vm = ioctl(kvm, KVM_CREATE_VM, vm_type);
  if (vm < 0) die("KVM_CREATE_VM");
  int memfd = memfd_create("vmm-ram", MFD_CLOEXEC);
  if (memfd < 0 || ftruncate(memfd, MEMFD_SIZE) < 0) die("memfd");
  uint8_t *ram = mmap(NULL, MEMFD_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (ram == MAP_FAILED) die("mmap");
  uint8_t *block = ram + MEMFD_OFFSET;
  struct create_gmem gm = {.size = GMEM_SIZE};
  int gmem = ioctl(vm, CREATE_GMEM, &gm);
  if (gmem < 0) die("KVM_CREATE_GUEST_MEMFD");
  struct region2 region = {.slot = SLOT, .flags = MEM_GUEST_MEMFD, .gpa = GPA, .size = BLOCK, .uaddr = (uint64_t)block,
                           .gmem_offset = GMEM_OFFSET, .gmem_fd = (uint32_t)gmem};
  if (ioctl(vm, SET_REGION2, &region) < 0) die("KVM_SET_USER_MEMORY_REGION2");
  printf("vmm: VM type %lu, memslot %d at gpa 0x%llx (%llu KiB): memfd from +%llu KiB, guest_memfd from +%llu KiB\n", vm_type, SLOT,
         (unsigned long long)GPA, (unsigned long long)(BLOCK / KiB), (unsigned long long)(MEMFD_OFFSET / KiB), (unsigned long long)(GMEM_OFFSET / KiB));

  int requests[2], answers[2];
  if (pipe2(requests, O_CLOEXEC) < 0 || pipe2(answers, O_CLOEXEC) < 0) die("pipe2");
  char here[4096];
  char converter[4200];
  if (converter_path) snprintf(converter, sizeof converter, "%s", converter_path);
  else {
    if (!realpath(argv[0], here)) die("realpath");
    snprintf(converter, sizeof converter, "%s/converter.js", dirname(here));
  }
  fflush(stdout);  // or the child would inherit (and the exec drop) a copy of what is buffered
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    // Moved out of the way first (fd 4 may be the VM itself, which dup2(gmem, 4) would
    // replace), then into place: dup2 clears FD_CLOEXEC on the copy, so exactly these five
    // fds reach the child.
    int from[5] = {memfd, gmem, vm, requests[1], answers[0]};
    for (int i = 0; i < 5; i++) if ((from[i] = fcntl(from[i], F_DUPFD_CLOEXEC, 100)) < 0) die("F_DUPFD");
    for (int i = 0; i < 5; i++) if (dup2(from[i], 3 + i) < 0) die("dup2");
    char *args[] = {(char *)node, converter, vfio ? "--vfio" : NULL, (char *)vfio, NULL};
    execvp(node, args);
    die("exec node");
  }
  close(requests[1]);
  close(answers[0]);

  // Serve the child's requests until it closes its end.
  FILE *in = fdopen(requests[0], "r");
  char line[8192];
  struct attributes asked[16];
  int count = 0, refused = 0;
  char done[8192] = "";
  while (fgets(line, sizeof line, in)) {
    unsigned long long gpa, size, attrs;
    if (sscanf(line, "attr %llx %llx %llx", &gpa, &size, &attrs) == 3) {
      struct attributes request = {.address = gpa, .size = size, .attributes = attrs};
      int err = ioctl(vm, SET_ATTRIBUTES, &request) < 0 ? errno : 0;
      if (err) refused++;
      if (count < 16) asked[count] = request;
      count++;
      char answer[32];
      int n = snprintf(answer, sizeof answer, "%d\n", -err);
      if (write(answers[1], answer, n) != n) die("write answer");
      printf("vmm: KVM_SET_MEMORY_ATTRIBUTES [0x%llx, +0x%llx) = %s for the child: %s\n", gpa, size, attrs ? "private" : "shared", err ? strerror(err) : "done");
    } else if (strncmp(line, "done ", 5) == 0) {
      snprintf(done, sizeof done, "%s", line + 5);
    }
  }
  int status;
  if (waitpid(child, &status, 0) < 0) die("waitpid");
  printf("vmm: the child reported %s", done[0] ? done : "nothing\n");

  // The checks, from the VMM's side.
  check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the guestmem child exited 0");
  check(count == 3 && refused == 0, "the child asked for exactly three attribute changes, and KVM took each");
  check(count >= 1 && asked[0].address == GPA && asked[0].size == BLOCK && asked[0].attributes == ATTRIBUTE_PRIVATE,
        "1st: the whole block private (guestmem's starting state)");
  check(count >= 2 && asked[1].address == GPA && asked[1].size == SHARED_LEN && asked[1].attributes == 0, "2nd: the first 256 KiB shared");
  check(count >= 3 && asked[2].address == GPA + PRIVATE_OFF && asked[2].size == PRIVATE_LEN && asked[2].attributes == ATTRIBUTE_PRIVATE,
        "3rd: 64 KiB at +64 KiB private again");
  // First, before reading any hole through the mapping: a read fault on shared memory
  // allocates the page.
  struct stat st;
  if (fstat(memfd, &st) < 0) die("fstat");
  char what[128];
  snprintf(what, sizeof what, "the memfd holds exactly the 192 KiB still shared (st_blocks: %llu KiB)", (unsigned long long)st.st_blocks / 2);
  check((uint64_t)st.st_blocks * 512 == SHARED_LEN - PRIVATE_LEN, what);
  check(all_bytes(block, 0, PRIVATE_OFF, PATTERN) && all_bytes(block, PRIVATE_OFF + PRIVATE_LEN, SHARED_LEN - PRIVATE_OFF - PRIVATE_LEN, PATTERN),
        "the shared pages hold the child's pattern, seen through the VMM's own mapping");
  check(all_bytes(block, PRIVATE_OFF, PRIVATE_LEN, 0), "the pages made private again read zero here: the child's punch-hole freed them");
  check(all_bytes(ram, 0, MEMFD_OFFSET, 0) && all_bytes(block, SHARED_LEN, MEMFD_SIZE - MEMFD_OFFSET - SHARED_LEN, 0),
        "nothing outside the shared pages was touched (the memfd before the block, the rest of the block and past it)");
  check(fcntl(memfd, F_GETFD) >= 0 && fcntl(gmem, F_GETFD) >= 0 && fcntl(vm, F_GETFD) >= 0, "the VMM's own fds are all still open");
  printf("vmm: %s\n", failures ? "FAILED" : "every check held");
  return failures ? 1 : 0;
}
