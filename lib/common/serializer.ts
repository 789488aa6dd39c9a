// Runs asynchronous operations one at a time, in call order: the next starts when the
// previous has settled, whether it resolved or rejected.

export class Serializer {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(op: () => Promise<T>): Promise<T> {
    const result = this.tail.then(op);
    this.tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }
}
