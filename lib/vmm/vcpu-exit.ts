// A vCPU's exits as plain objects, one kind per KVM exit reason the VMM loop handles
// (decoded in lib/vmm/exit-decoder.ts from the copy of kvm_run's exit the addon's runner
// hands over). `exitReason` is KVM's number.

interface ExitBase {
  exitReason: number;
}

/** KVM_EXIT_IO: port I/O, handed to the port handlers. */
export interface IoExit extends ExitBase {
  reason: 'io';
  direction: 'in' | 'out';
  port: number;
  /** Bytes per transfer (1, 2 or 4). */
  size: number;
  /** Transfers: more than 1 for string I/O (rep outsb). */
  count: number;
  /** OUT only: size * count bytes. */
  data?: Buffer;
}

/** KVM_EXIT_MMIO: an access to guest memory no memslot backs. */
export interface MmioExit extends ExitBase {
  reason: 'mmio';
  address: bigint;
  length: number;
  isWrite: boolean;
  data?: Buffer;
}

/** KVM_EXIT_HYPERCALL: the guest made a hypercall the VMM handles (MAP_GPA_RANGE). */
export interface HypercallExit extends ExitBase {
  reason: 'hypercall';
  nr: bigint;
  args: bigint[];
  flags: bigint;
  /** KVM_EXIT_HYPERCALL_LONG_MODE: the guest made the call in 64-bit mode. */
  longMode: boolean;
}

/** KVM_EXIT_MEMORY_FAULT: an access that disagrees with the page's state (SNP, TDX). */
export interface MemoryFaultExit extends ExitBase {
  reason: 'memory-fault';
  /** KVM_MEMORY_EXIT_FLAG_PRIVATE (bit 3): the guest accessed the range as private. */
  flags: bigint;
  gpa: bigint;
  size: bigint;
}

/**
 * KVM_EXIT_TDX (Linux 6.16+): a TDVMCALL KVM hands to userspace (GetQuote,
 * SetupEventNotifyInterrupt, GetTdVmCallInfo leaf 1), answered with a TDVMCALL status
 * (tdvmcall.ts).
 */
export interface TdxExit extends ExitBase {
  reason: 'tdx';
  /** The TDVMCALL's number (the TD's R11). */
  nr: bigint;
  flags: bigint;
  /** The status KVM filled in before the exit (its default answer). */
  ret: bigint;
  /** The call's inputs and outputs after ret (gpa/size, vector, leaf and R11..R14). */
  data: bigint[];
}

export interface SimpleExit extends ExitBase {
  reason: 'hlt' | 'intr' | 'shutdown';
}

export interface FailEntryExit extends ExitBase {
  reason: 'fail-entry';
  hardwareEntryFailureReason: bigint;
  cpu: number;
}

export interface InternalErrorExit extends ExitBase {
  reason: 'internal-error';
  suberror: number;
  data: bigint[];
}

export interface SystemEventExit extends ExitBase {
  reason: 'system-event';
  type: number;
  data: bigint[];
  /** A confidential guest ended itself (SEV termination request, TDX fatal error): why, in one clause. */
  termination?: string;
}

export interface OtherExit extends ExitBase {
  reason: 'exception' | 'unknown' | 'other';
  [detail: string]: unknown;
}

/** Every vCPU exit the VMM loop handles, as a plain object per kind. */
export type VcpuExit =
  | IoExit
  | MmioExit
  | HypercallExit
  | MemoryFaultExit
  | TdxExit
  | SimpleExit
  | FailEntryExit
  | InternalErrorExit
  | SystemEventExit
  | OtherExit;

export const KVM_MEMORY_EXIT_FLAG_PRIVATE = 1n << 3n;

/** One line for an error message: the exit's kind and its details. */
export function describeExit(exit: VcpuExit): string {
  const details = Object.entries(exit)
    .filter(([key]) => key !== 'reason' && key !== 'exitReason')
    .map(([key, value]) => `${key}=${formatValue(value)}`);
  return `${exit.reason} (KVM exit ${exit.exitReason})${details.length ? ` ${details.join(' ')}` : ''}`;
}

function formatValue(value: unknown): string {
  if (typeof value === 'bigint') return `0x${value.toString(16)}`;
  if (Buffer.isBuffer(value)) return value.toString('hex');
  if (Array.isArray(value)) return `[${value.map(formatValue).join(',')}]`;
  return String(value);
}
