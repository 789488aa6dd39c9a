// The guestmem command: dispatch, help, and exit codes (0 success, 1 a failed operation,
// 2 bad usage with a message that says what to fix). Each command's help is written from the
// same option table that parses its arguments (command-spec.ts).
//
// Bare `guestmem` prints the overview and exits 0, as cargo, gh and docker do: asking with
// nothing is asking what there is. An unknown command is bad usage (exit 2, overview on stderr).

import fs from 'node:fs';
import path from 'node:path';
import { messageOf } from '../common/errors';
import { BENCH, benchCommand } from './bench-command';
import { helpText, parseCommand, type CommandSpec } from './command-spec';
import { CONVERT, convertCommand } from './convert-command';
import { DEMO, demoCommand } from './demo-command';
import { GUEST, guestCommand } from './guest-command';
import { printJson } from './output';
import { PROBE, probeCommand } from './probe-command';
import { REPLAY, RUN, SIMULATE, replayCommand, runCommand, simulateCommand } from './script-commands';
import { UsageError } from './usage-error';
import { PACKAGE_ROOT, VM, vmCommand } from './vm-command';

interface Command {
  spec: CommandSpec;
  run: (args: string[]) => number | Promise<number>;
}

/** The commands, in the order the overview lists them. */
const COMMANDS: Record<string, Command> = {
  probe: { spec: PROBE, run: probeCommand },
  convert: { spec: CONVERT, run: convertCommand },
  simulate: { spec: SIMULATE, run: simulateCommand },
  run: { spec: RUN, run: runCommand },
  replay: { spec: REPLAY, run: replayCommand },
  guest: { spec: GUEST, run: guestCommand },
  bench: { spec: BENCH, run: benchCommand },
  demo: { spec: DEMO, run: demoCommand },
  vm: { spec: VM, run: vmCommand },
};

/** The package's version, from its package.json. */
export function version(): string {
  return (JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
}

export function overview(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((name) => name.length));
  return `guestmem ${version()}: guest_memfd, KVM memory attributes and VFIO DMA for confidential-VM work

usage: guestmem <command> [options]   (guestmem <command> --help for each)
       guestmem --version | --help

commands:
${Object.entries(COMMANDS).map(([name, { spec }]) => `  ${name.padEnd(width)}  ${spec.summary}`).join('\n')}

Every command takes --help; most take --json (one JSON object on stdout, and on failure
{"error":{"code","message"}}). Exit codes: 0 success, 1 a failed operation, 2 bad usage.

examples:
  guestmem probe
  guestmem demo
  guestmem simulate script.txt --json`;
}

/** A usage error's code under --json: parseArgs' own where it found it. */
function errorCode(error: unknown, usage: boolean): string {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === 'string') return code;
  return usage ? 'ERR_GUESTMEM_USAGE' : 'ERR_GUESTMEM_FAILED';
}

/** Reports a failure: text on stderr, and under --json the error object on stdout too. */
function fail(command: string, error: unknown, usage: boolean, json: boolean): number {
  const message = messageOf(error);
  if (json) printJson({ error: { code: errorCode(error, usage), message } });
  console.error(usage ? `guestmem ${command}: ${message}\n(see guestmem ${command} --help)` : `guestmem ${command}: ${message}`);
  if (!usage && process.env.GUESTMEM_DEBUG && error instanceof Error) console.error(error.stack);
  return usage ? 2 : 1;
}

/**
 * A reader that stops reading (`guestmem … | head`) makes the next write EPIPE, which
 * stdout emits as an 'error' event: unhandled, Node printed a stack trace and exited 1.
 * Here, as a Unix tool dies quietly of SIGPIPE, the command ends at once, quietly: exit 0
 * (or the status already set), since the reader chose to see no more.
 */
function endQuietlyOnClosedPipe(): void {
  if (process.stdout.listenerCount('error') > 0) return;
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EPIPE') throw error;
    process.exit(process.exitCode ?? 0);
  });
}

export async function main(argv: string[]): Promise<number> {
  endQuietlyOnClosedPipe();
  const [command, ...args] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    const topic = args[0];
    if (topic !== undefined && Object.hasOwn(COMMANDS, topic)) console.log(helpText(COMMANDS[topic]!.spec));
    else console.log(overview());
    return 0;
  }
  if (command === '--version' || command === '-V') {
    console.log(version());
    return 0;
  }
  // An own property only: 'constructor' or '__proto__' is not a command.
  const entry = Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : undefined;
  if (!entry) {
    if (argv.includes('--json')) printJson({ error: { code: 'ERR_GUESTMEM_USAGE', message: `unknown command '${command}'` } });
    console.error(`guestmem: unknown command '${command}'\n\n${overview()}`);
    return 2;
  }
  // `vm` passes what follows -- to the command it runs; only what precedes is its own.
  const split = command === 'vm' ? args.indexOf('--') : -1;
  const own = split >= 0 ? args.slice(0, split) : args;
  const json = args.includes('--json');
  const wantsHelp = own.includes('--help') || own.includes('-h');
  try {
    // Parsed here first so that --help answers even where the command would refuse the rest.
    if (parseCommand(entry.spec, own).values.help) {
      console.log(helpText(entry.spec));
      return 0;
    }
  } catch (error) {
    if (wantsHelp) {
      console.log(helpText(entry.spec));
      return 0;
    }
    return fail(command, error, true, json);
  }
  try {
    return await entry.run(args);
  } catch (error) {
    // Anything may be thrown (a listener's string, null): report it, never crash on it.
    const usage = error instanceof UsageError || (typeof (error as { code?: unknown } | null)?.code === 'string' && (error as { code: string }).code.startsWith('ERR_PARSE_ARGS'));
    return fail(command, error instanceof Error ? error : new Error(`non-error thrown: ${messageOf(error)}`), usage, json);
  }
}
