// /dev/kvm, VMs and guest_memfd: typed owners of the fds, each method one native call.
// Types and 64-bit ranges are checked here before any syscall; what only the kernel can
// judge (alignment rules, slot overlap, attribute support) comes back as its errno.

import fs from 'node:fs';
import { checkBytes, checkExtent, checkSpan, type Bytes } from '../common/byte-range';
import { GuestmemError, invalidArgType, outOfRange, systemError } from '../common/errors';
import { describeValue } from '../common/validators';
import { FdOwner } from '../common/fd-owner';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  KVM_CAP_GUEST_MEMFD,
  KVM_CAP_MEMORY_ATTRIBUTES,
  KVM_CAP_PRE_FAULT_MEMORY,
  KVM_CAP_VM_TYPES,
  KVM_MEMORY_ATTRIBUTE_PRIVATE,
  KVM_MEM_GUEST_MEMFD,
  VM_TYPES,
  type VmType,
} from './kvm-constants';
import { native } from '../common/native';
import { initializeVm, type ConfidentialInitCalls, type VmInitialization } from './vm-init';
import type { ConfidentialLaunch, LaunchCalls } from './vm-launch';
import { SnpLaunch } from './snp-launch';
import { TdxLaunch } from './tdx-launch';
import { maskHasVmType, missingVmTypeLine, vmTypeName, vmTypesInMask } from './vm-types';
import { takeFd } from './shared-memory';

function checkU32(value: unknown, name: string): number {
  if (typeof value !== 'number') throw invalidArgType(`${name} must be a number, got ${typeof value}`);
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw outOfRange(`${name} must be a uint32, got ${value}`);
  return value;
}

/**
 * /dev/kvm: the API version, capabilities and VM creation. Owns its fd; `close()` is
 * idempotent.
 */
export class Kvm extends FdOwner {
  private constructor(fd: number) {
    super(fd, '/dev/kvm');
  }

  /** Opens /dev/kvm (or `path`) and checks KVM's API version. */
  static open(path = '/dev/kvm'): Kvm {
    // Without the addon nothing past the open works, on any host: say that first
    // (ERR_GUESTMEM_NATIVE_UNAVAILABLE), not that this host also lacks /dev/kvm.
    native();
    // libuv opens every fd with O_CLOEXEC.
    return new Kvm(fs.openSync(path, 'r+'));
  }

  get apiVersion(): number {
    return native().kvmGetApiVersion(this.fd);
  }

  /** KVM_CHECK_EXTENSION on /dev/kvm: 0 where the capability is absent, else its value. */
  checkExtension(capability: number): number {
    return native().kvmCheckExtension(this.fd, checkU32(capability, 'capability'));
  }

  /** The VM types this host can create, from KVM_CAP_VM_TYPES (just 'default' before it existed). */
  supportedVmTypes(): VmType[] {
    return vmTypesInMask(this.vmTypesMask);
  }

  /** KVM_CAP_VM_TYPES: bit N set when KVM_CREATE_VM accepts type N (0 before the capability existed). */
  get vmTypesMask(): number {
    return this.checkExtension(KVM_CAP_VM_TYPES);
  }

  /**
   * Creates a VM; its fd is owned by the returned Vm (closed with it, or with this Kvm). An
   * SNP or TDX VM is initialized as its type requires (KVM_SEV_INIT2; KVM_TDX_CAPABILITIES
   * and KVM_TDX_INIT_VM: see vm-init.ts) unless `initialize` is false (to ask the bare VM
   * its capabilities, as the probe does). Their launch begins too (`vm.launch`: SNP's
   * LAUNCH_START here; see vm-launch.ts). A type this host lacks is ERR_GUESTMEM_UNSUPPORTED
   * in one line with the fix, keeping the kernel's errno, code and syscall.
   */
  createVm(type: VmType | number = 'default', options: { initialize?: boolean; initCalls?: ConfidentialInitCalls; launchCalls?: LaunchCalls } = {}): Vm {
    // Checked before KVM_CREATE_VM: a bad options object found afterwards left a VM behind.
    if (options === null || typeof options !== 'object') throw invalidArgType(`createVm options must be an object, got ${describeValue(options)}`);
    if (options.initialize !== undefined && typeof options.initialize !== 'boolean') throw invalidArgType(`initialize must be a boolean, got ${describeValue(options.initialize)}`);
    if (typeof type !== 'number' && typeof type !== 'string') throw invalidArgType(`VM type must be a name or a number, got ${describeValue(type)}`);
    const number = typeof type === 'number' ? checkU32(type, 'VM type') : Object.hasOwn(VM_TYPES, type) ? VM_TYPES[type] : undefined;
    if (number === undefined) throw outOfRange(`unknown VM type '${String(type)}'; known: ${Object.keys(VM_TYPES).join(', ')}`);
    let fd: number;
    try {
      fd = native().kvmCreateVm(this.fd, number);
    } catch (error) {
      const mask = this.vmTypesMask;
      if ((error as NodeJS.ErrnoException).code !== 'EINVAL' || maskHasVmType(mask, number)) throw error;
      const e = error as NodeJS.ErrnoException;
      throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', `${missingVmTypeLine(type, mask)} (${e.message})`, { cause: error, errno: e.errno, syscall: e.syscall });
    }
    const vm = this.own(new Vm(fd, number));
    if (options.initialize === false) return vm;
    try {
      vm.initialization = initializeVm(number, { kvm: this.fd, vm: fd }, options.initCalls);
      vm.launch = beginLaunch(vm.initialization, fd, options.launchCalls);
    } catch (error) {
      vm.close();
      throw error;
    }
    return vm;
  }
}

/** The launch an initialized SNP or TDX VM needs before its vCPUs run; none for other types. */
function beginLaunch(initialization: VmInitialization, vmFd: number, calls?: LaunchCalls): ConfidentialLaunch | null {
  if (initialization.kind === 'snp') {
    const launch = new SnpLaunch(vmFd, calls);
    launch.start();
    return launch;
  }
  if (initialization.kind === 'tdx') return new TdxLaunch(vmFd, calls);
  return null;
}

/**
 * A memslot as KVM_SET_USER_MEMORY_REGION2 takes it: guest address, size, the shared mapping
 * and, for private memory, a guest_memfd.
 */
export interface MemoryRegion {
  slot: number;
  gpa: Bytes;
  size: Bytes;
  /** Host virtual address of the shared backing (SharedMemory.address). */
  userspaceAddress: Bytes;
  /** The private backing; omitted for a plain (shared-only) slot. */
  guestMemfd?: GuestMemfd;
  guestMemfdOffset?: Bytes;
  /** Extra KVM_MEM_* flags; KVM_MEM_GUEST_MEMFD is added when guestMemfd is given. */
  flags?: number;
}

/**
 * A KVM VM: memslots, guest_memfds, memory attributes and vCPUs. Owns its fd and closes the
 * objects made from it.
 */
export class Vm extends FdOwner {
  /** The KVM_CREATE_VM type number; -1 for an adopted VM whose type we cannot ask. */
  readonly type: number;
  /** What createVm did after KVM_CREATE_VM (SNP: KVM_SEV_INIT2; TDX: KVM_TDX_INIT_VM). */
  initialization: VmInitialization = { kind: 'none' };
  /**
   * An SNP or TDX VM's launch: what puts measured pages into private memory and ends the
   * launch before the first KVM_RUN (see vm-launch.ts). Null for other types.
   */
  launch: ConfidentialLaunch | null = null;

  /** @internal */
  constructor(fd: number, type: number) {
    super(fd, 'KVM VM');
    this.type = type;
  }

  /**
   * Takes a VM fd that another program created: duplicates it (the caller keeps its own
   * fd) and checks that it is a KVM VM before anything else is done with it.
   */
  static adopt(fd: number): Vm {
    checkU32(fd, 'fd');
    let target: string;
    try {
      target = fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch (error) {
      throw systemError('EBADF', 9, 'readlink', `fd ${fd} is not open (${(error as NodeJS.ErrnoException).code ?? 'unreadable'})`);
    }
    if (target !== 'anon_inode:kvm-vm') {
      throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', `fd ${fd} is not a KVM VM (it is ${target})`);
    }
    const vm = new Vm(native().dupCloexec(fd), -1);
    try {
      vm.checkExtension(KVM_CAP_GUEST_MEMFD);
    } catch (error) {
      vm.close();
      throw error;
    }
    return vm;
  }

  /** Closes the launch's /dev/sev (SNP) with the VM. */
  protected override beforeClose(): void {
    if (this.launch instanceof SnpLaunch) this.launch.close();
  }

  /** KVM_CHECK_EXTENSION on the VM (what this VM's type supports): 0 where absent, else its value. */
  checkExtension(capability: number): number {
    return native().kvmCheckExtension(this.fd, checkU32(capability, 'capability'));
  }

  /** KVM_ENABLE_CAP on the VM, with args[0] = arg0. */
  enableCap(capability: number, arg0: Bytes = 0): void {
    native().kvmEnableCap(this.fd, checkU32(capability, 'capability'), checkBytes(arg0, 'capability argument'));
  }

  /** @internal Makes `child` (a vCPU) close before this VM does. */
  override own<T extends FdOwner>(child: T): T {
    return super.own(child);
  }

  get supportsGuestMemfd(): boolean {
    return this.checkExtension(KVM_CAP_GUEST_MEMFD) > 0;
  }

  /** The KVM_MEMORY_ATTRIBUTE_* bits this VM supports (PRIVATE is 1n << 3n). */
  get memoryAttributes(): bigint {
    return BigInt(this.checkExtension(KVM_CAP_MEMORY_ATTRIBUTES));
  }

  /** True when this VM takes KVM_PRE_FAULT_MEMORY (x86 with two-dimensional paging, 6.10+). */
  get supportsPreFault(): boolean {
    return this.checkExtension(KVM_CAP_PRE_FAULT_MEMORY) > 0;
  }

  /**
   * KVM_PRE_FAULT_MEMORY: maps [gpa, gpa + size) into this VM's page tables before the
   * guest touches it, as private or shared per the memory attributes. It is a vCPU ioctl:
   * `vcpuFd` is one of this VM's vCPUs.
   */
  preFaultMemory(vcpuFd: number, gpa: Bytes, size: Bytes): void {
    const [start, length] = checkSpan(gpa, size, 'pre-fault range');
    native().kvmPreFaultMemory(checkU32(vcpuFd, 'vcpuFd'), start, length);
  }

  /** KVM_CREATE_GUEST_MEMFD: `size` bytes of private memory the host cannot map; owned by this VM. */
  createGuestMemfd(size: Bytes, flags: Bytes = 0): GuestMemfd {
    const length = checkBytes(size, 'guest_memfd size');
    const checkedFlags = checkBytes(flags, 'guest_memfd flags');
    let fd: number;
    try {
      fd = native().kvmCreateGuestMemfd(this.fd, length, checkedFlags);
    } catch (error) {
      // With flags asked for, EINVAL is the kernel refusing them (KVM_CAP_GUEST_MEMFD_FLAGS
      // says which it takes), not a missing guest_memfd: its own error says so best.
      if (checkedFlags !== 0n && (error as NodeJS.ErrnoException)?.code === 'EINVAL') throw error;
      throw this.unsupported(error, KVM_CAP_GUEST_MEMFD, 'KVM_CREATE_GUEST_MEMFD', 'guest_memfd');
    }
    return this.own(new GuestMemfd(fd, length));
  }

  /** KVM_SET_USER_MEMORY_REGION2: creates or changes a memslot. */
  setUserMemoryRegion(region: MemoryRegion): void {
    const slot = checkU32(region.slot, 'slot');
    const [gpa, size] = checkSpan(region.gpa, region.size, 'memslot');
    const userspaceAddress = checkBytes(region.userspaceAddress, 'userspaceAddress');
    const guestMemfdOffset = checkBytes(region.guestMemfdOffset ?? 0, 'guestMemfdOffset');
    const flags = checkU32(region.flags ?? 0, 'flags') | (region.guestMemfd ? KVM_MEM_GUEST_MEMFD : 0);
    const guestMemfd = region.guestMemfd ? region.guestMemfd.fd : 0;
    native().kvmSetUserMemoryRegion2(this.fd, slot, flags, gpa, size, userspaceAddress, guestMemfd, guestMemfdOffset);
  }

  /** Deletes a memslot (a region of size 0, as KVM defines it). */
  deleteMemorySlot(slot: number): void {
    native().kvmSetUserMemoryRegion2(this.fd, checkU32(slot, 'slot'), 0, 0, 0, 0, 0, 0);
  }

  /** KVM_SET_MEMORY_ATTRIBUTES: 'private' sets KVM_MEMORY_ATTRIBUTE_PRIVATE, 'shared' clears all. */
  setMemoryAttributes(gpa: Bytes, size: Bytes, to: 'private' | 'shared' | bigint): void {
    const [start, length] = checkExtent(gpa, size, 1n << 64n, 'attribute range');
    const attributes = to === 'private' ? KVM_MEMORY_ATTRIBUTE_PRIVATE : to === 'shared' ? 0n : to;
    if (typeof attributes !== 'bigint') throw invalidArgType(`attributes must be 'private', 'shared' or a bigint, got ${String(to)}`);
    try {
      native().kvmSetMemoryAttributes(this.fd, start, length, attributes);
    } catch (error) {
      throw this.unsupported(error, KVM_CAP_MEMORY_ATTRIBUTES, 'KVM_SET_MEMORY_ATTRIBUTES', 'memory attributes');
    }
  }

  /**
   * A VM ioctl's ENOTTY/EINVAL where this VM lacks the capability (a default VM has no
   * guest_memfd nor memory attributes): ERR_GUESTMEM_UNSUPPORTED naming what is missing
   * and the fix, keeping the kernel's errno and syscall; any other error as it came.
   */
  private unsupported(error: unknown, capability: number, ioctl: string, what: string): unknown {
    const e = error as NodeJS.ErrnoException;
    if (e?.code !== 'ENOTTY' && e?.code !== 'EINVAL') return error;
    let present: number;
    try {
      present = this.checkExtension(capability);
    } catch {
      return error;
    }
    if (present > 0) return error;
    const type = this.type < 0 ? 'this VM' : `this VM (type ${vmTypeName(this.type)})`;
    return new GuestmemError(
      'ERR_GUESTMEM_UNSUPPORTED',
      `${ioctl}: ${type} has no ${what} (KVM_CHECK_EXTENSION says 0): create it as 'sw-protected' (or 'snp', 'tdx'); guestmem probe says what this host supports (${e.message})`,
      { cause: error, errno: e.errno, syscall: e.syscall },
    );
  }
}

/**
 * A guest_memfd made by another program (an embedding VMM): its fd, and where in it the
 * block's private memory starts (the memslot's guest_memfd_offset). Duplicated unless
 * `close` is true (then guestmem takes that fd and closes it).
 */
export interface GuestMemfdSource {
  fd: number;
  offset?: Bytes;
  close?: boolean;
}

/**
 * A guest_memfd: the private backing of guest memory. The host cannot map it (6.12: mmap →
 * ENODEV; 6.18+ only with GUEST_MEMFD_FLAG_MMAP, see KVM_CAP_GUEST_MEMFD_FLAGS); it can only
 * give pages back (punch-hole) or preallocate them. guest_memfd
 * refuses fallocate without KEEP_SIZE (EOPNOTSUPP), so both calls pass it. Offsets given
 * to it are within its window: [offset, offset + size) of the file.
 */
export class GuestMemfd extends FdOwner {
  readonly size: bigint;
  /** Where the window starts in the file: 0 for one guestmem created. */
  readonly offset: bigint;

  /** @internal */
  constructor(fd: number, size: bigint, offset = 0n) {
    super(fd, 'guest_memfd');
    this.size = size;
    this.offset = offset;
  }

  /** A VMM's guest_memfd, `size` bytes of it from `source.offset` (checked against the file's size). */
  static adopt(source: GuestMemfdSource, size: Bytes): GuestMemfd {
    if (source === null || typeof source !== 'object') throw invalidArgType(`guest_memfd source must be { fd, offset? }, got ${source === null ? 'null' : typeof source}`);
    const length = checkBytes(size, 'guest_memfd size');
    const offset = checkBytes(source.offset ?? 0, 'guest_memfd offset');
    if (offset % 4096n !== 0n) throw outOfRange(`guest_memfd offset must be a multiple of 4096, got ${offset}`);
    const fd = takeFd(source.fd, source.close, 'guest_memfd');
    try {
      const fileSize = fs.fstatSync(fd, { bigint: true }).size;
      if (offset + length > fileSize) throw outOfRange(`guest_memfd [0x${offset.toString(16)}, +0x${length.toString(16)}) is past the end of the 0x${fileSize.toString(16)}-byte guest_memfd`);
    } catch (error) {
      fs.closeSync(fd);
      throw error;
    }
    return new GuestMemfd(fd, length, offset);
  }

  /** Frees the range's private pages (fallocate PUNCH_HOLE | KEEP_SIZE). */
  punchHole(offset: Bytes, size: Bytes): void {
    const [start, length] = checkExtent(offset, size, this.size, 'punch-hole', 'guest_memfd');
    native().fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, this.offset + start, length);
  }

  /** Allocates the range's private pages ahead of use (fallocate KEEP_SIZE). */
  allocate(offset: Bytes, size: Bytes): void {
    const [start, length] = checkExtent(offset, size, this.size, 'allocate', 'guest_memfd');
    native().fallocate(this.fd, FALLOC_FL_KEEP_SIZE, this.offset + start, length);
  }
}
