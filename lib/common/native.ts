// The addon's surface, declared once by hand. Native functions take fds and plain
// numbers/bigints, make one syscall (or one batch of them), and throw Node-style errors
// (`code`, `errno`, `syscall`). Policy and validation live in the TypeScript above them.
//
// The module always loads, even where the addon was not built or cannot load: `native()`
// then throws ERR_GUESTMEM_NATIVE_UNAVAILABLE with the reason, and the tracker, the
// simulator and the probe still work.

import path from 'node:path';
import { GuestmemError, messageOf } from './errors';

type U64 = number | bigint;

/** An opaque handle to a host mapping (a tagged External); its finalizer releases it. */
export type NativeMappingHandle = { readonly __nativeMapping: unique symbol };

export interface NativeMapping {
  handle: NativeMappingHandle;
  address: bigint;
}

export interface Type1IommuInfo {
  flags: number;
  iovaPageSizes?: bigint;
  iovaRanges: Array<[start: bigint, end: bigint]>;
  /** Mappings left under the type1 entry limit (the dma-avail capability), if reported. */
  dmaAvailable?: number;
}

/** Byte offsets of kvm_run's exit fields in a runner's exit view (offsetof in the addon). */
export interface NativeKvmRunLayout {
  exitReason: number; ioDirection: number; ioSize: number; ioPort: number; ioCount: number; ioData: number;
  mmioAddress: number; mmioData: number; mmioLength: number; mmioIsWrite: number;
  hypercallNr: number; hypercallArgs: number; hypercallFlags: number;
  memoryFaultFlags: number; memoryFaultGpa: number; memoryFaultSize: number;
  tdxFlags: number; tdxNr: number; tdxRet: number; tdxData: number;
  failEntryReason: number; failEntryCpu: number; internalSuberror: number; internalNdata: number; internalData: number;
  exception: number; exceptionErrorCode: number; hardwareExitReason: number;
}

export interface NativeVcpuRunner {
  /** The next KVM_RUN; a hypercall's return value, when given, is written first. */
  run(hypercallReturn?: number | bigint): void;
  /** KVM_RUN on the calling thread: the exit is in the view when it returns; throws the run's error. */
  runSync(hypercallReturn?: number | bigint): void;
  /** Kicks whichever thread runs this vCPU, through any runner of it; sticky. */
  stop(): void;
  completeIo(data: Uint8Array): void;
  completeMmio(data: Uint8Array): void;
  /** Answers a KVM_EXIT_TDX with a TDVMCALL status before the next entry. */
  completeTdvmcall(status: bigint): void;
  close(): void;
}

export interface NativeSegment {
  base: bigint; limit: number; selector: number; type: number; present: number; dpl: number;
  db: number; s: number; l: number; g: number; avl: number; unusable: number;
}
export interface NativeSregs {
  cs: NativeSegment; ds: NativeSegment; es: NativeSegment; fs: NativeSegment; gs: NativeSegment;
  ss: NativeSegment; tr: NativeSegment; ldt: NativeSegment;
  gdt: { base: bigint; limit: number }; idt: { base: bigint; limit: number };
  cr0: bigint; cr2: bigint; cr3: bigint; cr4: bigint; cr8: bigint; efer: bigint; apic_base: bigint;
}
export type RegisterName =
  | 'rax' | 'rbx' | 'rcx' | 'rdx' | 'rsi' | 'rdi' | 'rsp' | 'rbp' | 'r8' | 'r9' | 'r10' | 'r11'
  | 'r12' | 'r13' | 'r14' | 'r15' | 'rip' | 'rflags';
export type NativeRegs = Record<RegisterName, bigint>;

export interface NativeAddon {
  // KVM
  kvmGetApiVersion(kvmFd: number): number;
  kvmCheckExtension(fd: number, capability: number): number;
  kvmCreateVm(kvmFd: number, type: number): number;
  kvmCreateGuestMemfd(vmFd: number, size: U64, flags: U64): number;
  kvmSetUserMemoryRegion2(
    vmFd: number, slot: number, flags: number, gpa: U64, size: U64,
    userspaceAddress: U64, guestMemfd: number, guestMemfdOffset: U64,
  ): void;
  kvmSetMemoryAttributes(vmFd: number, gpa: U64, size: U64, attributes: U64): void;
  /** KVM_PRE_FAULT_MEMORY over the whole range (resumed after partial progress). */
  kvmPreFaultMemory(vcpuFd: number, gpa: U64, size: U64): void;
  // Confidential-VM initialization (KVM_MEMORY_ENCRYPT_OP); a failure carries the
  // firmware's status (firmwareError) or the TDX module's (hwError) when there is one.
  kvmSevInit2(vmFd: number, vmsaFeatures: U64, ghcbVersion: number): void;
  kvmTdxCapabilities(vmFd: number): { supportedAttributes: bigint; supportedXfam: bigint; cpuid: Buffer };
  kvmTdxInitVm(vmFd: number, attributes: U64, xfam: U64, cpuid: Uint8Array): void;
  // Their launch (confidential_launch.cc): byte addresses and sizes, page-aligned; TDX's
  // partial-progress loop is inside, SNP's in snp-launch.ts (one call, what is left).
  kvmSevSnpLaunchStart(vmFd: number, sevFd: number, policy: U64, gosvw: Uint8Array | undefined, flags: number): void;
  kvmSevSnpLaunchUpdate(vmFd: number, sevFd: number, gpa: U64, uaddr: U64, length: U64, type: number): { gpa: bigint; uaddr: bigint; length: bigint };
  kvmSevSnpLaunchFinish(vmFd: number, sevFd: number, hostData: Uint8Array | undefined): void;
  /** No hwError: KVM never returns the TDX module's status for a vCPU sub-command. */
  kvmTdxInitVcpu(vcpuFd: number, rcx: U64): void;
  /** KVM_TDX_GET_CPUID: the TD's CPUID as raw kvm_cpuid_entry2 records. */
  kvmTdxGetCpuid(vcpuFd: number): Buffer;
  kvmTdxInitMemRegion(vcpuFd: number, sourceAddress: U64, gpa: U64, pages: U64, measure: boolean): void;
  kvmTdxFinalizeVm(vmFd: number): void;
  // vCPUs
  kvmGetVcpuMmapSize(kvmFd: number): number;
  kvmCreateVcpu(vmFd: number, id: number): number;
  kvmEnableCap(vmFd: number, capability: number, arg0: U64): void;
  kvmGetRegs(vcpuFd: number): NativeRegs;
  kvmSetRegs(vcpuFd: number, regs: Record<RegisterName, U64>): void;
  kvmGetSregs(vcpuFd: number): NativeSregs;
  kvmSetSregs(vcpuFd: number, sregs: NativeSregs): void;
  /** Raw kvm_cpuid_entry2 records (40 bytes each), for kvmSetCpuid2. */
  kvmGetSupportedCpuid(kvmFd: number): Buffer;
  kvmSetCpuid2(vcpuFd: number, entries: Uint8Array): void;
  /** Maps the vCPU's kvm_run and runs KVM_RUN on a thread of its own. */
  /** onExit(error) after each run(); the exit itself is in exitView (vcpuExitViewBytes long). */
  VcpuRunner: new (vcpuFd: number, mmapSize: number, exitView: Uint8Array, onExit: (error: Error | undefined) => void) => NativeVcpuRunner;
  readonly vcpuExitViewBytes: number;
  readonly kvmRunLayout: NativeKvmRunLayout;
  // Memory
  memfdCreate(name: string): number;
  fallocate(fd: number, mode: number, offset: U64, length: U64): void;
  ftruncate(fd: number, length: U64): void;
  mmap(fd: number, length: U64, offset: U64, writable: boolean): NativeMapping;
  /** A handle over memory already mapped here; owned: munmap it when the handle goes. */
  adoptMapping(address: U64, length: U64, owned: boolean): NativeMapping;
  /** MADV_REMOVE or MADV_DONTNEED over a range of this process's memory. */
  madvise(address: U64, length: U64, advice: number): void;
  /** An ArrayBuffer over part of a mapping (1..maxWindow bytes) that keeps it mapped. */
  mapWindow(mapping: NativeMappingHandle, offset: U64, length: U64): ArrayBuffer;
  /** Unmaps now, emptying (detaching) every window still alive; idempotent. */
  munmap(mapping: NativeMappingHandle): void;
  /** The longest window the addon makes: 2^32, Node 20's buffer limit. */
  readonly maxWindow: number;
  dupCloexec(fd: number): number;
  // VFIO type1
  vfioGetApiVersion(containerFd: number): number;
  vfioCheckExtension(containerFd: number, extension: number): number;
  vfioSetIommu(containerFd: number, type: number): number;
  vfioGroupGetStatus(groupFd: number): number;
  vfioGroupSetContainer(groupFd: number, containerFd: number): void;
  vfioIommuGetInfo(containerFd: number): Type1IommuInfo;
  /** Maps each (vaddr, iova, size) run as size / granule mappings; all or nothing. */
  vfioMapDmaRuns(containerFd: number, runs: BigUint64Array, granule: U64): number;
  /** One unmap per run, over whole mappings; returns the bytes unmapped; all or nothing. */
  vfioUnmapDmaRuns(containerFd: number, runs: BigUint64Array, granule: U64): bigint;
  // iommufd
  iommufdIoasAlloc(iommuFd: number): number;
  iommufdIoasIovaRanges(iommuFd: number, ioasId: number): { ranges: Array<[start: bigint, last: bigint]>; alignment: bigint };
  iommufdIoasMapRuns(iommuFd: number, ioasId: number, runs: BigUint64Array, granule: U64): number;
  /** absentOk: a run with nothing mapped (ENOENT) counts as 0 bytes instead of failing. */
  iommufdIoasUnmapRuns(iommuFd: number, ioasId: number, runs: BigUint64Array, granule: U64, absentOk: boolean): bigint;
  // VFIO device
  vfioGroupGetDeviceFd(groupFd: number, device: string): number;
  vfioDeviceGetInfo(deviceFd: number): { flags: number; numRegions: number; numIrqs: number };
  vfioDeviceGetRegionInfo(deviceFd: number, index: number): { index: number; flags: number; size: bigint; offset: bigint };
  vfioDeviceBindIommufd(deviceFd: number, iommuFd: number): number;
  vfioDeviceAttachIommufdPt(deviceFd: number, ptId: number): void;
  // Fault injection: present only when GUESTMEM_FAULTS was set at load (lib/common/fault-injection.ts).
  setFaults?(spec: string): void;
  faultCounts?(): { fired: number; calls: Record<string, number> };
}

let loaded: NativeAddon | null = null;
let loadError: unknown = null;

/** The package's root: node-gyp-build looks there for prebuilds/ and then build/. */
const PACKAGE_ROOT = path.resolve(__dirname, '..', '..', '..');

/**
 * A prebuilt binary for this platform (prebuilds/linux-x64/, one N-API build for every Node
 * from 20 on), else the one compiled in build/ (the fallback install, or a developer's
 * `npm run build:native`). GUESTMEM_PREBUILD names another folder to load from (node-gyp-build's <NAME>_PREBUILD).
 */
function load(): NativeAddon {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- node-gyp-build ships no types; called only when the addon is first needed
  const nodeGypBuild = require('node-gyp-build') as (root: string) => unknown;
  return nodeGypBuild(PACKAGE_ROOT) as NativeAddon;
}

/**
 * Counts crossings into C++ while `enabled`, so a benchmark, a report or a test can show that
 * a conversion's are bounded. Off by default: then native() is the addon itself, and a call
 * costs no wrapper. Turned on, native() is a counting copy from that call on.
 */
export const nativeCalls = { count: 0, enabled: false };

let counting: NativeAddon | null = null;

function counted(addon: NativeAddon): NativeAddon {
  const wrapped: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(addon)) {
    // Constants, and classes (VcpuRunner): a wrapper could not be called with `new`.
    if (typeof fn !== 'function' || /^[A-Z]/.test(name)) {
      wrapped[name] = fn;
      continue;
    }
    wrapped[name] = (...args: unknown[]) => {
      nativeCalls.count++;
      return (fn as (...a: unknown[]) => unknown)(...args);
    };
  }
  return wrapped as unknown as NativeAddon;
}

/**
 * The addon (a counting copy while nativeCalls.enabled), or a coded error that says why it is
 * not there. Its mmap, adoptMapping and madvise are unguarded: HostMapping and removeMemory
 * (host-mapping.ts) check their requests first, and nothing else calls them.
 */
export function native(): NativeAddon {
  if (loaded) return nativeCalls.enabled ? (counting ??= counted(loaded)) : loaded;
  if (loadError === null) {
    try {
      loaded = load();
      return native();
    } catch (error) {
      loadError = error;
    }
  }
  // Lines joined by splitting, not by /\s*\n\s*/g, which backtracks quadratically over a
  // long run of blanks (every pattern applied to text from outside stays linear).
  const reason = messageOf(loadError).split('\n').map((line) => line.trim()).filter(Boolean).join('; ');
  throw new GuestmemError(
    'ERR_GUESTMEM_NATIVE_UNAVAILABLE',
    `the guestmem native addon could not be loaded: ${reason} (no prebuilt binary fits this host and none was compiled; with a C++ compiler, python3 and make: \`npm rebuild guestmem\`)`,
    { cause: loadError },
  );
}

/**
 * Whether the native addon loaded (a prebuilt binary or one compiled here); `probe()` says why
 * not.
 */
export function nativeAvailable(): boolean {
  try {
    native();
    return true;
  } catch {
    return false;
  }
}
