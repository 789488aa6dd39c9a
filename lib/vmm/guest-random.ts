// The random program's choices, computed on the host: the same xorshift64 (13, 7, 17)
// stream per vCPU as guest/random.s, so a test knows every request the guest will make
// before it makes it.

import type { PageState } from '../tracker/state-change-channel';

const MASK = (1n << 64n) - 1n;
const GOLDEN = 0x9e3779b97f4a7c15n;

export interface RandomStep {
  firstPage: number;
  pages: number;
  to: PageState;
}

export class GuestRandom {
  private state: bigint;

  constructor(seed: bigint, vcpuIndex: number) {
    const mixed = ((BigInt(vcpuIndex + 1) * GOLDEN) & MASK) ^ (seed & MASK);
    this.state = mixed === 0n ? 1n : mixed;
  }

  next(): bigint {
    let x = this.state;
    x ^= (x << 13n) & MASK;
    x ^= x >> 7n;
    x ^= (x << 17n) & MASK;
    this.state = x;
    return x;
  }

  /** The next conversion of a data area of `dataPages` pages, runs of at most `maxRun`. */
  step(dataPages: number, maxRun: number): RandomStep {
    const firstPage = Number(this.next() % BigInt(dataPages));
    const limit = Math.min(maxRun, dataPages - firstPage);
    const pages = 1 + Number(this.next() % BigInt(limit));
    const to: PageState = (this.next() & 1n) === 1n ? 'private' : 'shared';
    return { firstPage, pages, to };
  }
}
