// Kernel uAPI for vCPUs (include/uapi/linux/kvm.h, arch/x86/include/uapi/asm/kvm.h),
// defined here as uapi.h defines the memory side: the build machine's headers predate
// KVM_EXIT_MEMORY_FAULT. Every struct is pinned by static_assert on size and offsets;
// values are Linux 6.12's, unchanged in 7.2.
#pragma once

#include <linux/ioctl.h>
#include <cstddef>
#include <cstdint>

#include "uapi.h"

namespace uapi {

struct kvm_regs {
  uint64_t rax, rbx, rcx, rdx;
  uint64_t rsi, rdi, rsp, rbp;
  uint64_t r8, r9, r10, r11;
  uint64_t r12, r13, r14, r15;
  uint64_t rip, rflags;
};
static_assert(sizeof(kvm_regs) == 144);
static_assert(offsetof(kvm_regs, rip) == 128);

struct kvm_segment {
  uint64_t base;
  uint32_t limit;
  uint16_t selector;
  uint8_t type;
  uint8_t present, dpl, db, s, l, g, avl;
  uint8_t unusable;
  uint8_t padding;
};
static_assert(sizeof(kvm_segment) == 24);
static_assert(offsetof(kvm_segment, selector) == 12);
static_assert(offsetof(kvm_segment, type) == 14);
static_assert(offsetof(kvm_segment, unusable) == 22);

struct kvm_dtable {
  uint64_t base;
  uint16_t limit;
  uint16_t padding[3];
};
static_assert(sizeof(kvm_dtable) == 16);

struct kvm_sregs {
  kvm_segment cs, ds, es, fs, gs, ss;
  kvm_segment tr, ldt;
  kvm_dtable gdt, idt;
  uint64_t cr0, cr2, cr3, cr4, cr8;
  uint64_t efer;
  uint64_t apic_base;
  uint64_t interrupt_bitmap[4];
};
static_assert(sizeof(kvm_sregs) == 312);
static_assert(offsetof(kvm_sregs, gdt) == 192);
static_assert(offsetof(kvm_sregs, cr0) == 224);
static_assert(offsetof(kvm_sregs, efer) == 264);
static_assert(offsetof(kvm_sregs, interrupt_bitmap) == 280);

struct kvm_cpuid_entry2 {
  uint32_t function;
  uint32_t index;
  uint32_t flags;
  uint32_t eax, ebx, ecx, edx;
  uint32_t padding[3];
};
static_assert(sizeof(kvm_cpuid_entry2) == 40);

struct kvm_cpuid2 {
  uint32_t nent;
  uint32_t padding;
  kvm_cpuid_entry2 entries[];
};
static_assert(sizeof(kvm_cpuid2) == 8);

struct kvm_enable_cap {
  uint32_t cap;
  uint32_t flags;
  uint64_t args[4];
  uint8_t pad[64];
};
static_assert(sizeof(kvm_enable_cap) == 104);
static_assert(offsetof(kvm_enable_cap, args) == 8);

// The shared page of a vCPU (mmap of its fd): what KVM_RUN reports, and what the VMM
// writes back before the next KVM_RUN (I/O data, a hypercall's return value).
struct kvm_run {
  uint8_t request_interrupt_window;
  uint8_t immediate_exit;
  uint8_t padding1[6];
  uint32_t exit_reason;
  uint8_t ready_for_interrupt_injection;
  uint8_t if_flag;
  uint16_t flags;
  uint64_t cr8;
  uint64_t apic_base;
  union {
    struct {
      uint64_t hardware_exit_reason;
    } hw;
    struct {
      uint64_t hardware_entry_failure_reason;
      uint32_t cpu;
    } fail_entry;
    struct {
      uint32_t exception;
      uint32_t error_code;
    } ex;
    struct {
      uint8_t direction;
      uint8_t size;
      uint16_t port;
      uint32_t count;
      uint64_t data_offset;
    } io;
    struct {
      uint64_t phys_addr;
      uint8_t data[8];
      uint32_t len;
      uint8_t is_write;
    } mmio;
    struct {
      uint64_t nr;
      uint64_t args[6];
      uint64_t ret;
      uint64_t flags;
    } hypercall;
    struct {
      uint32_t suberror;
      uint32_t ndata;
      uint64_t data[16];
    } internal;
    struct {
      uint32_t type;
      uint32_t ndata;
      uint64_t data[16];
    } system_event;
    struct {
      uint64_t flags;
      uint64_t gpa;
      uint64_t size;
    } memory_fault;
    // KVM_EXIT_TDX (Linux 6.16+): a TDVMCALL KVM hands to userspace; the answer goes in
    // unknown.ret (every member of the kernel's union starts with ret).
    struct {
      uint64_t flags;
      uint64_t nr;
      union {
        struct {
          uint64_t ret;
          uint64_t data[5];
        } unknown;
      };
    } tdx;
    char padding[256];
  };
  uint64_t kvm_valid_regs;
  uint64_t kvm_dirty_regs;
};
static_assert(offsetof(kvm_run, immediate_exit) == 1);
static_assert(offsetof(kvm_run, exit_reason) == 8);
static_assert(offsetof(kvm_run, hw) == 32);
static_assert(offsetof(kvm_run, io.port) == 34);
static_assert(offsetof(kvm_run, io.count) == 36);
static_assert(offsetof(kvm_run, io.data_offset) == 40);
static_assert(offsetof(kvm_run, mmio.data) == 40);
static_assert(offsetof(kvm_run, mmio.len) == 48);
static_assert(offsetof(kvm_run, mmio.is_write) == 52);
static_assert(offsetof(kvm_run, hypercall.args) == 40);
static_assert(offsetof(kvm_run, hypercall.ret) == 88);
static_assert(offsetof(kvm_run, hypercall.flags) == 96);
static_assert(offsetof(kvm_run, internal.data) == 40);
static_assert(offsetof(kvm_run, memory_fault.gpa) == 40);
static_assert(offsetof(kvm_run, memory_fault.size) == 48);
static_assert(offsetof(kvm_run, tdx.nr) == 40);
static_assert(offsetof(kvm_run, tdx.unknown.ret) == 48);
static_assert(offsetof(kvm_run, tdx.unknown.data) == 56);
static_assert(offsetof(kvm_run, kvm_valid_regs) == 288);

constexpr uint32_t KVM_EXIT_UNKNOWN = 0;
constexpr uint32_t KVM_EXIT_EXCEPTION = 1;
constexpr uint32_t KVM_EXIT_IO = 2;
constexpr uint32_t KVM_EXIT_HYPERCALL = 3;
constexpr uint32_t KVM_EXIT_DEBUG = 4;
constexpr uint32_t KVM_EXIT_HLT = 5;
constexpr uint32_t KVM_EXIT_MMIO = 6;
constexpr uint32_t KVM_EXIT_SHUTDOWN = 8;
constexpr uint32_t KVM_EXIT_FAIL_ENTRY = 9;
constexpr uint32_t KVM_EXIT_INTR = 10;
constexpr uint32_t KVM_EXIT_INTERNAL_ERROR = 17;
constexpr uint32_t KVM_EXIT_SYSTEM_EVENT = 24;
constexpr uint32_t KVM_EXIT_MEMORY_FAULT = 39;
constexpr uint32_t KVM_EXIT_TDX = 40;  // Linux 6.16+
constexpr uint8_t KVM_EXIT_IO_IN = 0;
constexpr uint8_t KVM_EXIT_IO_OUT = 1;

constexpr unsigned long KVM_GET_VCPU_MMAP_SIZE = _IO(kKvmIo, 0x04);
constexpr unsigned long KVM_GET_SUPPORTED_CPUID = _IOWR(kKvmIo, 0x05, kvm_cpuid2);
constexpr unsigned long KVM_CREATE_VCPU = _IO(kKvmIo, 0x41);
constexpr unsigned long KVM_RUN = _IO(kKvmIo, 0x80);
constexpr unsigned long KVM_GET_REGS = _IOR(kKvmIo, 0x81, kvm_regs);
constexpr unsigned long KVM_SET_REGS = _IOW(kKvmIo, 0x82, kvm_regs);
constexpr unsigned long KVM_GET_SREGS = _IOR(kKvmIo, 0x83, kvm_sregs);
constexpr unsigned long KVM_SET_SREGS = _IOW(kKvmIo, 0x84, kvm_sregs);
constexpr unsigned long KVM_SET_CPUID2 = _IOW(kKvmIo, 0x90, kvm_cpuid2);
constexpr unsigned long KVM_ENABLE_CAP = _IOW(kKvmIo, 0xa3, kvm_enable_cap);
static_assert(KVM_RUN == 0xae80);
static_assert(KVM_GET_REGS == 0x8090ae81);
static_assert(KVM_SET_SREGS == 0x4138ae84);
static_assert(KVM_GET_SUPPORTED_CPUID == 0xc008ae05);
static_assert(KVM_SET_CPUID2 == 0x4008ae90);
static_assert(KVM_ENABLE_CAP == 0x4068aea3);

}  // namespace uapi
