// A stand-in VM for the plug tests: it records the memory attributes it is given and the
// pages each backing's punch-hole gives back, and fails the next punch-hole on request.

import type { PageState } from '../../lib/tracker/state-change-channel';

const PAGE = 4096;

export class PunchingVm {
  readonly closed = false;
  readonly supportsGuestMemfd = true;
  readonly memoryAttributes = 8n;
  readonly attributes: PageState[];
  /** Pages given back by a punch-hole of each backing, since the test last reset it. */
  punched = { shared: 0, private: 0 };
  /** Fail the next punch-hole (of either backing) with EIO. */
  failPunch = false;

  /** A VM whose one block of `pages` pages starts at `gpa`. */
  constructor(private readonly gpa: number, pages: number) {
    this.attributes = new Array<PageState>(pages).fill('shared');
  }

  createGuestMemfd() {
    return {
      closed: false,
      offset: 0n,
      punchHole: (_offset: number, size: number) => this.punch('private', size),
      close() {
        this.closed = true;
      },
    };
  }

  /** The block's memfd discard goes here too: `block.shared.discard = (o, s) => vm.punch('shared', s)`. */
  punch(backing: 'shared' | 'private', size: number): void {
    if (this.failPunch) {
      this.failPunch = false;
      throw Object.assign(new Error('EIO: input/output error, fallocate'), { code: 'EIO', errno: -5, syscall: 'fallocate' });
    }
    this.punched[backing] += size / PAGE;
  }

  setUserMemoryRegion(): void {}
  deleteMemorySlot(): void {}

  setMemoryAttributes(gpa: number, size: number, to: PageState): void {
    const first = (gpa - this.gpa) / PAGE;
    this.attributes.fill(to, first, first + size / PAGE);
  }

  /** Lets share() go through: no thread attaches in these tests. */
  describeForThreads() {
    return { kind: 'none' };
  }
}
