// Runs asynchronous operations one at a time, in call order: the next starts when the
// previous has settled, whether it resolved or rejected.

export class Serializer {
  private tail: Promise<unknown> = Promise.resolve();
  /** Operations queued or running. */
  private active = 0;

  /**
   * True when no operation is queued or running: a caller may act at once, synchronously,
   * without overtaking anything asked for earlier. It turns true before the last
   * operation's promise settles, so code awaiting that promise sees the queue idle.
   */
  get idle(): boolean {
    return this.active === 0;
  }

  run<T>(op: () => Promise<T>): Promise<T> {
    this.active++;
    const result = this.tail.then(async () => {
      try {
        return await op();
      } finally {
        this.active--;
      }
    });
    this.tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }
}
