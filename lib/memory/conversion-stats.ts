// What a prototype wants to know about its conversions: how many, and where the time went.

/** The steps of a conversion, as {@link ConversionStats} times them. */
export type ConversionStep = 'kvmAttributes' | 'listeners' | 'discard' | 'prefault';

/** Counts of a block's conversions (done, failed, rejected) and the time spent in each step. */
export class ConversionStats {
  /**
   * Whether each step's time is measured (two clock readings per step, about 100 ns each
   * on some hosts: more than the tracker's own work). Off by default, so a VMM's hot path
   * pays nothing for it; `guestmem convert`, `run` and `bench` turn it on. The optional
   * pre-fault is always timed: it is a syscall whose worth is its time.
   */
  timing = false;
  conversions = 0;
  failed = 0;
  /** Optional KVM_PRE_FAULT_MEMORY calls that failed (ignored, as QEMU ignores them). */
  prefaultFailed = 0;
  /** Nanoseconds spent per step, over all conversions. */
  readonly ns: Record<ConversionStep, bigint> = { kvmAttributes: 0n, listeners: 0n, discard: 0n, prefault: 0n };

  /** Adds the time since `started` (process.hrtime.bigint()) to a step. */
  add(step: ConversionStep, started: bigint): void {
    this.ns[step] += process.hrtime.bigint() - started;
  }

  /** add, returning the clock reading it took, so that the next step starts from it. */
  lap(step: ConversionStep, started: bigint): bigint {
    const now = process.hrtime.bigint();
    this.ns[step] += now - started;
    return now;
  }

  /** The counts, and the nanoseconds per step as decimal strings. */
  toJSON(): { conversions: number; failed: number; prefaultFailed: number; ns: Record<ConversionStep, string> } {
    const ns = this.ns;
    return {
      conversions: this.conversions,
      failed: this.failed,
      prefaultFailed: this.prefaultFailed,
      ns: { kvmAttributes: String(ns.kvmAttributes), listeners: String(ns.listeners), discard: String(ns.discard), prefault: String(ns.prefault) },
    };
  }
}
