// What a prototype wants to know about its conversions: how many, and where the time went.

export type ConversionStep = 'kvmAttributes' | 'listeners' | 'discard';

export class ConversionStats {
  conversions = 0;
  failed = 0;
  /** Nanoseconds spent per step, over all conversions. */
  readonly ns: Record<ConversionStep, bigint> = { kvmAttributes: 0n, listeners: 0n, discard: 0n };

  add(step: ConversionStep, started: bigint): void {
    this.ns[step] += process.hrtime.bigint() - started;
  }

  toJSON(): { conversions: number; failed: number; ns: Record<ConversionStep, string> } {
    return {
      conversions: this.conversions,
      failed: this.failed,
      ns: { kvmAttributes: String(this.ns.kvmAttributes), listeners: String(this.ns.listeners), discard: String(this.ns.discard) },
    };
  }
}
