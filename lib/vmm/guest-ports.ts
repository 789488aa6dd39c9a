// The I/O ports through which guest programs talk to the host (guest/common.inc), and
// the record of what they said: console text, checks, values, exit status, sync steps.

import type { IoExit } from './vcpu-exit';

export const PORT_CONSOLE = 0xe9;
export const PORT_CHECK = 0xea;
export const PORT_EXIT = 0xeb;
export const PORT_SYNC = 0xec;
export const PORT_VALUE = 0xed;

const CHECK_FAILED = 0x8000_0000;

/** One check a guest program reports on port 0xea: its number and whether it held. */
export interface GuestCheck {
  vcpu: number;
  id: number;
  ok: boolean;
}

/** What a port handler may do besides answering: end its vCPU, or stop the whole VM. */
export interface PortContext {
  readonly vcpu: number;
  exitVcpu(status: number): void;
  /**
   * Hands a message to the VMM's owner on the main thread (VcpuThreadsOptions.onMessage):
   * how a handler running on a vCPU's thread reports what it saw. Structured-cloneable.
   */
  post(message: unknown): void;
}

/** Returns the bytes an IN reads (size * count), nothing for an OUT. */
export type PortHandler = (exit: IoExit, context: PortContext) => void | Uint8Array | Promise<void | Uint8Array>;

export interface GuestProtocolHooks {
  /** The guest reached a sync point; it stays stopped until this settles. */
  onSync?(step: number, vcpu: number): void | Promise<void>;
  onConsole?(text: string, vcpu: number): void;
}

function word(exit: IoExit): number {
  if (exit.direction !== 'out' || !exit.data || exit.data.length < 4) throw new Error(`port 0x${exit.port.toString(16)} takes a 32-bit OUT`);
  return exit.data.readUInt32LE(0);
}

/**
 * The port protocol the guest programs speak: console (0xe9), checks (0xea), exit status
 * (0xeb), sync (0xec) and values (0xed).
 */
export class GuestProtocol {
  console = '';
  readonly checks: GuestCheck[] = [];
  readonly values: Array<{ vcpu: number; value: number }> = [];
  readonly syncs: Array<{ vcpu: number; step: number }> = [];

  constructor(private readonly hooks: GuestProtocolHooks = {}) {}

  get failedChecks(): GuestCheck[] {
    return this.checks.filter((check) => !check.ok);
  }

  /** The port handlers for the VMM loop: console, checks, exit status, sync and values. */
  ports(): Map<number, PortHandler> {
    return new Map<number, PortHandler>([
      [PORT_CONSOLE, (exit, { vcpu }) => {
        if (exit.direction !== 'out' || !exit.data) throw new Error('the console port takes OUT only');
        const text = exit.data.toString('latin1');
        this.console += text;
        this.hooks.onConsole?.(text, vcpu);
      }],
      [PORT_CHECK, (exit, { vcpu }) => {
        const value = word(exit);
        this.checks.push({ vcpu, id: value & ~CHECK_FAILED, ok: (value & CHECK_FAILED) === 0 });
      }],
      [PORT_VALUE, (exit, { vcpu }) => {
        this.values.push({ vcpu, value: word(exit) | 0 });
      }],
      [PORT_SYNC, async (exit, { vcpu }) => {
        const step = word(exit);
        this.syncs.push({ vcpu, step });
        await this.hooks.onSync?.(step, vcpu);
      }],
      [PORT_EXIT, (exit, context) => context.exitVcpu(word(exit))],
    ]);
  }
}
