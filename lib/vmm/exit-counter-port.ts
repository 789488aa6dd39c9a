// A port handler module for bare-exit timing (`guestmem bench`, lib/cli/exit-bench.ts):
// it answers nothing, counts the OUTs on its port, takes the time after `warmup` of them
// and again `exits` later, posts the time per exit (context.post) and ends its vCPU. As a
// module it runs on each vCPU's own thread; the same factory serves the main thread's loop.

import type { PortHandler } from './guest-ports';

/** What the counter is told: its port, the exits it lets pass untimed, and the exits it times. */
export interface ExitCounterOptions {
  port: number;
  warmup: number;
  exits: number;
}

/** What it posts when done: the vCPU, the exits timed, and ns per exit. */
export interface ExitCounterResult {
  vcpu: number;
  exits: number;
  nsPerExit: number;
}

/** The factory a PortModule names: one counting handler for `options.port`. */
export function exitCounter(options: unknown): Map<number, PortHandler> {
  const { port, warmup, exits } = options as ExitCounterOptions;
  let seen = 0;
  let started = 0;
  const handler: PortHandler = (_exit, context) => {
    seen++;
    if (seen === warmup) started = performance.now();
    if (seen !== warmup + exits) return;
    const result: ExitCounterResult = { vcpu: context.vcpu, exits, nsPerExit: ((performance.now() - started) * 1e6) / exits };
    context.post(result);
    context.exitVcpu(0);
  };
  return new Map([[port, handler]]);
}
