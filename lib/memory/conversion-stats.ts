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
  /** Nanoseconds per step, as exact integers in doubles (up to 104 days each). */
  private readonly elapsed: Record<ConversionStep, number> = { kvmAttributes: 0, listeners: 0, discard: 0, prefault: 0 };

  /** Nanoseconds spent per step, over all conversions. */
  get ns(): Record<ConversionStep, bigint> {
    const e = this.elapsed;
    return { kvmAttributes: BigInt(e.kvmAttributes), listeners: BigInt(e.listeners), discard: BigInt(e.discard), prefault: BigInt(e.prefault) };
  }

  /**
   * The clock the steps are timed by, in ms (performance.now()): process.hrtime.bigint()
   * allocates a BigInt per reading and, in the harness VM, costs four times as many
   * instructions, which the time outside the steps would otherwise show as ours.
   */
  static now(): number {
    return performance.now();
  }

  /** Adds the time since `started` (a {@link ConversionStats.now} reading) to a step. */
  add(step: ConversionStep, started: number): void {
    this.elapsed[step] += Math.round((performance.now() - started) * 1e6);
  }

  /** add, returning the clock reading it took, so that the next step starts from it. */
  lap(step: ConversionStep, started: number): number {
    const now = performance.now();
    this.elapsed[step] += Math.round((now - started) * 1e6);
    return now;
  }

  /** The counts, and the nanoseconds per step as decimal strings. */
  toJSON(): { conversions: number; failed: number; prefaultFailed: number; ns: Record<ConversionStep, string> } {
    const ns = this.elapsed;
    return {
      conversions: this.conversions,
      failed: this.failed,
      prefaultFailed: this.prefaultFailed,
      ns: { kvmAttributes: String(ns.kvmAttributes), listeners: String(ns.listeners), discard: String(ns.discard), prefault: String(ns.prefault) },
    };
  }
}
