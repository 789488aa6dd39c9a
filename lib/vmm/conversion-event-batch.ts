// A vCPU thread's conversion events as they cross to the main thread: packed into one
// ArrayBuffer per batch (the addresses as u64s, the rest as doubles) and transferred, not
// structured-cloned as objects. Cloning 64 event objects with their bigints and strings
// was a fifth of a busy vCPU thread's time in a profile of the guest loop; a transfer moves
// one buffer. Reasons (rejected and failed events only) travel beside it as strings.

import type { ConversionEvent } from './vmm-loop';

/** One batch as it crosses threads: `buffer` is transferred. */
export interface PackedEvents {
  readonly buffer: ArrayBuffer;
  readonly count: number;
  /** [index in the batch, reason] of the events that have one. */
  readonly reasons: ReadonlyArray<readonly [number, string]>;
}

/** u64 slots per event: gpa, size. */
const ADDRESS_SLOTS = 2;
/** f64 slots per event: vcpu, source, to, result, outcome, ns. */
const NUMBER_SLOTS = 6;
const BYTES_PER_EVENT = 8 * (ADDRESS_SLOTS + NUMBER_SLOTS);

const SOURCES: ReadonlyArray<ConversionEvent['source']> = ['hypercall', 'memory-fault'];
const OUTCOMES: ReadonlyArray<ConversionEvent['outcome']> = ['converted', 'rejected', 'failed'];

/** Gathers up to `capacity` events in a buffer of their own; `take` hands it over for transfer. */
export class EventPacker {
  private addresses!: BigUint64Array;
  private numbers!: Float64Array;
  private reasons: Array<[number, string]> = [];
  private count = 0;

  constructor(readonly capacity: number) {
    this.fresh();
  }

  get length(): number {
    return this.count;
  }

  push(event: ConversionEvent): void {
    const i = this.count++;
    this.addresses[i * ADDRESS_SLOTS] = BigInt.asUintN(64, event.gpa);
    this.addresses[i * ADDRESS_SLOTS + 1] = BigInt.asUintN(64, event.size);
    const n = i * NUMBER_SLOTS;
    this.numbers[n] = event.vcpu;
    this.numbers[n + 1] = event.source === 'hypercall' ? 0 : 1;
    this.numbers[n + 2] = event.to === 'shared' ? 1 : 0;
    this.numbers[n + 3] = event.result;
    this.numbers[n + 4] = OUTCOMES.indexOf(event.outcome);
    this.numbers[n + 5] = event.ns;
    if (event.reason !== undefined) this.reasons.push([i, event.reason]);
  }

  /** The batch so far, for transfer (its buffer is the receiver's from now on); the packer starts a new one. */
  take(): PackedEvents {
    const packed: PackedEvents = { buffer: this.numbers.buffer as ArrayBuffer, count: this.count, reasons: this.reasons };
    this.fresh();
    return packed;
  }

  private fresh(): void {
    const buffer = new ArrayBuffer(this.capacity * BYTES_PER_EVENT);
    this.addresses = new BigUint64Array(buffer, 0, this.capacity * ADDRESS_SLOTS);
    this.numbers = new Float64Array(buffer, this.capacity * ADDRESS_SLOTS * 8, this.capacity * NUMBER_SLOTS);
    this.reasons = [];
    this.count = 0;
  }
}

/** The events of a packed batch, as the worker's loop made them. */
export function unpackEvents(packed: PackedEvents): ConversionEvent[] {
  const capacity = packed.buffer.byteLength / BYTES_PER_EVENT;
  const addresses = new BigUint64Array(packed.buffer, 0, capacity * ADDRESS_SLOTS);
  const numbers = new Float64Array(packed.buffer, capacity * ADDRESS_SLOTS * 8, capacity * NUMBER_SLOTS);
  const reasons = new Map(packed.reasons);
  const events: ConversionEvent[] = [];
  for (let i = 0; i < packed.count; i++) {
    const n = i * NUMBER_SLOTS;
    const event: ConversionEvent = {
      vcpu: numbers[n]!,
      source: SOURCES[numbers[n + 1]!]!,
      gpa: addresses[i * ADDRESS_SLOTS]!,
      size: addresses[i * ADDRESS_SLOTS + 1]!,
      to: numbers[n + 2] === 1 ? 'shared' : 'private',
      result: numbers[n + 3]!,
      outcome: OUTCOMES[numbers[n + 4]!]!,
      ns: numbers[n + 5]!,
    };
    const reason = reasons.get(i);
    if (reason !== undefined) event.reason = reason;
    events.push(event);
  }
  return events;
}
