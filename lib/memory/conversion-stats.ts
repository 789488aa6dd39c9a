// What a prototype wants to know about its conversions: how many, and where the time went.

/** The steps of a conversion, as {@link ConversionStats} times them. */
export type ConversionStep = 'kvmAttributes' | 'listeners' | 'discard' | 'prefault';

/** Counts of a block's conversions (done, failed, rejected) and the time spent in each step. */
export class ConversionStats {
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
