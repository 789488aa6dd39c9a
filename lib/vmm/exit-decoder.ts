// A vCPU's exit, read from its exit view: the runner copies kvm_run's exit there (and an
// OUT's data after it) before calling back, and this turns it into a VcpuExit. Decoding
// here rather than in C++ keeps an exit to one crossing: under emulation each N-API call
// costs microseconds, and building the object natively took about twenty of them. The
// offsets come from the addon (offsetof on the struct uapi_vcpu.h pins), so the two cannot
// drift apart.

import { describeTermination } from './system-event';
import type { NativeKvmRunLayout } from '../common/native';
import type { VcpuExit } from './vcpu-exit';

const KVM_EXIT_EXCEPTION = 1;
const KVM_EXIT_IO = 2;
const KVM_EXIT_HYPERCALL = 3;
const KVM_EXIT_HLT = 5;
const KVM_EXIT_MMIO = 6;
const KVM_EXIT_SHUTDOWN = 8;
const KVM_EXIT_FAIL_ENTRY = 9;
const KVM_EXIT_INTR = 10;
const KVM_EXIT_INTERNAL_ERROR = 17;
const KVM_EXIT_SYSTEM_EVENT = 24;
const KVM_EXIT_MEMORY_FAULT = 39;
const KVM_EXIT_TDX = 40;
const TDX_DATA = 5;
const KVM_EXIT_IO_OUT = 1;
const HYPERCALL_ARGS = 6;
const INTERNAL_DATA_MAX = 16;
const KVM_EXIT_HYPERCALL_LONG_MODE = 1n;

export class ExitDecoder {
  private readonly data: DataView;

  constructor(
    private readonly view: Uint8Array,
    private readonly at: NativeKvmRunLayout,
  ) {
    this.data = new DataView(view.buffer, view.byteOffset, view.byteLength);
  }

  decode(): VcpuExit {
    const { data, at } = this;
    const exitReason = data.getUint32(at.exitReason, true);
    switch (exitReason) {
      case KVM_EXIT_IO: {
        const out = data.getUint8(at.ioDirection) === KVM_EXIT_IO_OUT;
        const size = data.getUint8(at.ioSize);
        const count = data.getUint32(at.ioCount, true);
        const exit: VcpuExit = { exitReason, reason: 'io', direction: out ? 'out' : 'in', port: data.getUint16(at.ioPort, true), size, count };
        if (out) exit.data = Buffer.from(this.view.subarray(at.ioData, at.ioData + Math.min(size * count, this.view.byteLength - at.ioData)));
        return exit;
      }
      case KVM_EXIT_HYPERCALL: {
        const args: bigint[] = [];
        for (let i = 0; i < HYPERCALL_ARGS; i++) args.push(data.getBigUint64(at.hypercallArgs + 8 * i, true));
        const flags = data.getBigUint64(at.hypercallFlags, true);
        return { exitReason, reason: 'hypercall', nr: data.getBigUint64(at.hypercallNr, true), args, flags, longMode: (flags & KVM_EXIT_HYPERCALL_LONG_MODE) !== 0n };
      }
      case KVM_EXIT_MMIO: {
        const length = data.getUint32(at.mmioLength, true);
        const isWrite = data.getUint8(at.mmioIsWrite) !== 0;
        const exit: VcpuExit = { exitReason, reason: 'mmio', address: data.getBigUint64(at.mmioAddress, true), length, isWrite };
        if (isWrite) exit.data = Buffer.from(this.view.subarray(at.mmioData, at.mmioData + Math.min(length, 8)));
        return exit;
      }
      case KVM_EXIT_MEMORY_FAULT:
        return {
          exitReason, reason: 'memory-fault',
          flags: data.getBigUint64(at.memoryFaultFlags, true),
          gpa: data.getBigUint64(at.memoryFaultGpa, true),
          size: data.getBigUint64(at.memoryFaultSize, true),
        };
      case KVM_EXIT_TDX: {
        const values: bigint[] = [];
        for (let i = 0; i < TDX_DATA; i++) values.push(data.getBigUint64(at.tdxData + 8 * i, true));
        return { exitReason, reason: 'tdx', nr: data.getBigUint64(at.tdxNr, true), flags: data.getBigUint64(at.tdxFlags, true), ret: data.getBigUint64(at.tdxRet, true), data: values };
      }
      case KVM_EXIT_HLT:
        return { exitReason, reason: 'hlt' };
      case KVM_EXIT_INTR:
        return { exitReason, reason: 'intr' };
      case KVM_EXIT_SHUTDOWN:
        return { exitReason, reason: 'shutdown' };
      case KVM_EXIT_FAIL_ENTRY:
        return {
          exitReason, reason: 'fail-entry',
          hardwareEntryFailureReason: data.getBigUint64(at.failEntryReason, true),
          cpu: data.getUint32(at.failEntryCpu, true),
        };
      case KVM_EXIT_INTERNAL_ERROR:
        return { exitReason, reason: 'internal-error', suberror: data.getUint32(at.internalSuberror, true), data: this.internalData() };
      case KVM_EXIT_SYSTEM_EVENT: {
        // kvm_run.system_event has internal's layout: a u32 type, a u32 ndata, u64 data[16].
        const type = data.getUint32(at.internalSuberror, true);
        const values = this.internalData();
        const termination = describeTermination(type, values);
        return termination === null ? { exitReason, reason: 'system-event', type, data: values } : { exitReason, reason: 'system-event', type, data: values, termination };
      }
      case KVM_EXIT_EXCEPTION:
        return {
          exitReason, reason: 'exception',
          exception: data.getUint32(at.exception, true),
          errorCode: data.getUint32(at.exceptionErrorCode, true),
        };
      default:
        return { exitReason, reason: exitReason === 0 ? 'unknown' : 'other', hardwareExitReason: data.getBigUint64(at.hardwareExitReason, true) };
    }
  }

  private internalData(): bigint[] {
    const count = Math.min(this.data.getUint32(this.at.internalNdata, true), INTERNAL_DATA_MAX);
    const values: bigint[] = [];
    for (let i = 0; i < count; i++) values.push(this.data.getBigUint64(this.at.internalData + 8 * i, true));
    return values;
  }
}
