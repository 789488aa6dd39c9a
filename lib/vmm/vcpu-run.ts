// One vCPU's entries into the guest through one mapping of its kvm_run: on a thread of the
// addon's own, the exit coming back as a promise (run), or on the calling thread, the exit
// returned (runSync: a vCPU's worker thread handling its own exits, as QEMU's vCPU threads
// do). Either way the exit is decoded from the view the addon fills, and the answer to it
// (a hypercall's return value, an IN's bytes, an MMIO read's bytes) is written before the
// next entry. The vCPU's fd is not this object's: Vcpu owns it on the thread that made
// it, and a worker borrows it (fds are process-wide).

import { GuestmemError, invalidArgType, outOfRange } from '../common/errors';
import { native, type NativeVcpuRunner } from '../common/native';
import { ExitDecoder } from './exit-decoder';
import type { VcpuExit } from './vcpu-exit';

interface PendingRun {
  resolve(exit: VcpuExit): void;
  reject(error: Error): void;
}

function closedRun(what: string): GuestmemError {
  return new GuestmemError('ERR_GUESTMEM_CLOSED', `${what} is closed`);
}

function busy(): GuestmemError {
  return new GuestmemError('ERR_GUESTMEM_BUSY', 'a KVM_RUN of this vCPU is already in flight');
}

/** KVM_RUN of one vCPU, on the addon's thread (run) or the caller's (runSync), and the answers to its exits. */
export class VcpuRun {
  readonly #runner: NativeVcpuRunner;
  readonly #decoder: ExitDecoder;
  readonly #what: string;
  #pending: PendingRun | null = null;
  #lastExit: VcpuExit | null = null;
  /** completeHypercall's value, written by the next entry in the same crossing. */
  #hypercallReturn: number | bigint | undefined = undefined;
  #closed = false;

  /** Maps the kvm_run of the vCPU at `fd` (KVM_GET_VCPU_MMAP_SIZE bytes); the fd must outlive this. */
  constructor(fd: number, mmapSize: number, what: string) {
    this.#what = what;
    const view = new Uint8Array(native().vcpuExitViewBytes);
    this.#decoder = new ExitDecoder(view, native().kvmRunLayout);
    this.#runner = new (native().VcpuRunner)(fd, mmapSize, view, (error) => this.#finish(error));
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** True while a run() is in flight. */
  get running(): boolean {
    return this.#pending !== null;
  }

  /** Enters the guest on the addon's thread; resolves with the next exit. */
  run(): Promise<VcpuExit> {
    if (this.#closed) return Promise.reject(closedRun(this.#what));
    if (this.#pending) return Promise.reject(busy());
    const promise = new Promise<VcpuExit>((resolve, reject) => {
      this.#pending = { resolve, reject };
    });
    try {
      this.#runner.run(this.#takeAnswer());
    } catch (error) {
      this.#pending = null;
      return Promise.reject(error);
    }
    return promise;
  }

  /** Enters the guest on this thread and returns its next exit (throws the run's error). */
  runSync(): VcpuExit {
    if (this.#closed) throw closedRun(this.#what);
    if (this.#pending) throw busy();
    this.#runner.runSync(this.#takeAnswer());
    const exit = this.#decoder.decode();
    this.#lastExit = exit;
    return exit;
  }

  #takeAnswer(): number | bigint | undefined {
    const answer = this.#hypercallReturn;
    this.#hypercallReturn = undefined;
    this.#lastExit = null;
    return answer;
  }

  #finish(error: Error | undefined): void {
    // A run that close() settled already: its late result has no one to go to.
    const pending = this.#pending;
    if (pending === null) return;
    this.#pending = null;
    if (error) {
      pending.reject(error);
      return;
    }
    const exit = this.#decoder.decode();
    this.#lastExit = exit;
    pending.resolve(exit);
  }

  /** Kicks the vCPU out of KVM_RUN, on whichever thread runs it; every later entry returns at once. */
  stop(): void {
    if (!this.#closed) this.#runner.stop();
  }

  /**
   * The value the guest finds in rax after its hypercall (negative: an error). Since KVM's
   * 2024 rework the VMM must always give one; it is written by the next entry.
   */
  completeHypercall(ret: number | bigint): void {
    this.#expectExit('completeHypercall', (exit) => exit.reason === 'hypercall', 'a hypercall');
    if (typeof ret !== 'number' && typeof ret !== 'bigint') throw invalidArgType(`a hypercall's return value must be a number or a bigint, got ${typeof ret}`);
    if (typeof ret === 'number' && !Number.isSafeInteger(ret)) throw outOfRange(`a hypercall's return value must be a safe integer, got ${ret}`);
    if (typeof ret === 'bigint' && (ret < -(1n << 63n) || ret >= 1n << 64n)) throw outOfRange(`a hypercall's return value must fit in 64 bits, got ${ret}`);
    this.#hypercallReturn = ret;
  }

  /** The TDVMCALL status a KVM_EXIT_TDX is answered with: the TD finds it in R10 after the next entry. */
  completeTdvmcall(status: bigint): void {
    this.#expectExit('completeTdvmcall', (exit) => exit.reason === 'tdx', 'a TDVMCALL');
    if (typeof status !== 'bigint') throw invalidArgType(`a TDVMCALL status must be a bigint, got ${typeof status}`);
    if (status < 0n || status >= 1n << 64n) throw outOfRange(`a TDVMCALL status must fit in 64 bits unsigned, got ${status}`);
    this.#runner.completeTdvmcall(status);
  }

  /** The bytes the guest's IN instruction reads (size * count). */
  completeIo(data: Uint8Array): void {
    this.#expectExit('completeIo', (exit) => exit.reason === 'io' && exit.direction === 'in', 'a port read (IN)');
    this.#runner.completeIo(data);
  }

  /** Answers an MMIO read exit with `data` before the vCPU re-enters. */
  completeMmio(data: Uint8Array): void {
    this.#expectExit('completeMmio', (exit) => exit.reason === 'mmio' && !exit.isWrite, 'an MMIO read');
    this.#runner.completeMmio(data);
  }

  /** complete*() answers the exit the vCPU stopped at: refused when closed, while it runs, or after another exit. */
  #expectExit(what: string, matches: (exit: VcpuExit) => boolean, wanted: string): void {
    if (this.#closed) throw closedRun(this.#what);
    if (this.#pending) throw new GuestmemError('ERR_GUESTMEM_BUSY', `${what} on ${this.#what}: its run() is in flight; wait for the exit (or stop() it) first`);
    const exit = this.#lastExit;
    if (exit === null || !matches(exit)) {
      throw new GuestmemError('ERR_GUESTMEM_EXIT_MISMATCH', `${what}: the vCPU's last exit was ${exit === null ? 'none (it has not run)' : `'${exit.reason}'`}, not ${wanted}: there is nothing to complete`);
    }
  }

  /**
   * Stops and joins the addon's thread and unmaps kvm_run. A run() in flight is settled now
   * with ERR_GUESTMEM_CLOSED: its thread may never have entered the guest, and nothing else
   * would settle it.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#runner.close();
    const pending = this.#pending;
    this.#pending = null;
    pending?.reject(closedRun(this.#what));
  }
}
