// One owner per fd. close() is idempotent and forgets the number before closing it, every
// use checks "closed" first, so a closed object never touches an fd the kernel may have
// handed to someone else. A FinalizationRegistry closes what the user forgot, as a last
// resort; a parent closes its children first.

import fs from 'node:fs';
import { closedError } from './errors';

const forgotten = new FinalizationRegistry<number>((fd) => {
  try {
    fs.closeSync(fd);
  } catch {
    // Nothing to report to: the owner is gone.
  }
});

export abstract class FdOwner implements Disposable {
  #fd: number;
  readonly #what: string;
  readonly #children = new Set<FdOwner>();
  #onClose: (() => void) | null = null;

  protected constructor(fd: number, what: string) {
    this.#fd = fd;
    this.#what = what;
    forgotten.register(this, fd, this);
  }

  /** The fd, for native calls; throws ERR_GUESTMEM_CLOSED after close(). */
  get fd(): number {
    if (this.#fd < 0) throw closedError(this.#what);
    return this.#fd;
  }

  get closed(): boolean {
    return this.#fd < 0;
  }

  /** Closes children first, then this fd. Safe to call twice. */
  close(): void {
    if (this.#fd < 0) return;
    for (const child of [...this.#children]) child.close();
    const fd = this.#fd;
    try {
      this.beforeClose();
    } finally {
      this.#fd = -1;
      forgotten.unregister(this);
      this.#onClose?.();
      fs.closeSync(fd);
    }
  }

  /** Closes it: `using` calls this at the end of its scope. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** Hook for subclasses that release more than the fd (a memslot); the fd is still open. */
  protected beforeClose(): void {}

  /** Makes `child` close when this closes (a parent owns its children; adopt is for foreign fds). */
  protected own<T extends FdOwner>(child: T): T {
    this.#children.add(child);
    child.#onClose = () => this.#children.delete(child);
    return child;
  }
}
