// Port handler modules for test/kernel/vcpu-threads.test.ts, loaded on a vCPU's own
// thread: one that counts OUTs and ends its vCPU after `exits` of them, and one that fails
// on one vCPU (throws, or ends its thread: process.exit in a worker ends the worker alone)
// while the others count forever.

import type { PortHandler } from '../../lib/vmm/guest-ports';

export function failingOn(options: unknown, vcpu: number): Map<number, PortHandler> {
  const { port, failing, how } = options as { port: number; failing: number; how: 'throw' | 'exit' };
  if (vcpu !== failing) return counting({ port, exits: Number.MAX_SAFE_INTEGER });
  return new Map([[port, () => {
    if (how === 'exit') process.exit(7);
    throw new Error('injected: the handler failed');
  }]]);
}

export function counting(options: unknown): Map<number, PortHandler> {
  const { port, exits } = options as { port: number; exits: number };
  let seen = 0;
  return new Map<number, PortHandler>([[port, (_exit, context) => {
    if (++seen === exits) context.exitVcpu(0);
  }]]);
}
