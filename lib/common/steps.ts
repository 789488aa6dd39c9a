// One body of code for a job that is synchronous when everything it calls is, and
// asynchronous otherwise: a generator that yields each promise it must wait for. runAsync
// awaits them; runSync runs it to the end at once and, should anything yield a promise all
// the same, throws `refusal()` into the generator at that point (as if the call had
// failed), so that the job's own error handling runs. Used on failure paths (undo, repair),
// where one body serves the synchronous and the asynchronous conversion alike.

export type Steps<T> = Generator<PromiseLike<unknown>, T, unknown>;

/** A promise nobody will await any more must not end the process as an unhandled rejection. */
function abandon(value: PromiseLike<unknown>): void {
  Promise.resolve(value).catch(() => {});
}

export function runSync<T>(steps: Steps<T>, refusal: () => Error): T {
  let step = steps.next();
  while (!step.done) {
    abandon(step.value);
    step = steps.throw(refusal());
  }
  return step.value;
}

export async function runAsync<T>(steps: Steps<T>): Promise<T> {
  let step = steps.next();
  while (!step.done) {
    let value: unknown;
    try {
      value = await step.value;
    } catch (error) {
      step = steps.throw(error);
      continue;
    }
    step = steps.next(value);
  }
  return step.value;
}
