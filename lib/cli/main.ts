// The guestmem command: dispatch, help, and exit codes (0 success, 1 a failed operation,
// 2 bad usage with a message that says what to fix). Each command's help is written from the
// same option table that parses its arguments (command-spec.ts).
//
// Bare `guestmem` prints the overview and exits 0, as cargo, gh and docker do: asking with
// nothing is asking what there is. An unknown command is bad usage: exit 2, one line naming the nearest command.

import fs from 'node:fs';
import path from 'node:path';
import { messageOf } from '../common/errors';
import { BENCH, benchCommand } from './bench-command';
import { helpText, parseCommand, type CommandSpec } from './command-spec';
import { CONVERT, convertCommand } from './convert-command';
import { DEMO, demoCommand } from './demo-command';
import { GUEST, guestCommand } from './guest-command';
import { errorCode } from './error-code';
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

/** Reports a failure: text on stderr, and under --json the error object on stdout too. */
function fail(command: string, error: unknown, usage: boolean, json: boolean): number {
  const message = messageOf(error);
  if (json) printJson({ error: { code: errorCode(error, usage ? 'ERR_GUESTMEM_USAGE' : 'ERR_GUESTMEM_FAILED'), message } });
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

/** The edit distance of two short words (insertions, deletions, substitutions, transpositions). */
function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i]![j] = Math.min(d[i]![j]!, d[i - 2]![j - 2]! + 1);
    }
  }
  return d[a.length]![b.length]!;
}

/** The nearest of `candidates` to `word` (at most two edits, or a prefix of it), for "did you mean". */
export function nearest(word: string, candidates: readonly string[]): string | undefined {
  if (word.length === 0 || word.length > 64) return undefined;
  let best: string | undefined;
  let bestDistance = 3;
  for (const candidate of candidates) {
    const d = candidate.startsWith(word) && word.length >= 2 ? 1 : distance(word, candidate);
    if (d < bestDistance) [best, bestDistance] = [candidate, d];
  }
  return best;
}

/** An unknown command: exit 2, one line with the nearest command, not the whole overview. */
function unknownCommand(command: string, json: boolean): number {
  const guess = nearest(command, Object.keys(COMMANDS));
  const message = `unknown command '${command}'${guess ? `; did you mean '${guess}'?` : ''}`;
  if (json) printJson({ error: { code: 'ERR_GUESTMEM_USAGE', message } });
  console.error(`guestmem: ${message}\n(guestmem --help lists the commands)`);
  return 2;
}

/** An unknown option's message, with the nearest option the command takes. */
function withOptionGuess(error: unknown, spec: CommandSpec): unknown {
  const e = error as { code?: unknown; message?: unknown } | null;
  if (e?.code !== 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || typeof e.message !== 'string') return error;
  const option = /^Unknown option '--([^']*)'/.exec(e.message)?.[1];
  const guess = option === undefined ? undefined : nearest(option, Object.keys(spec.options));
  return guess ? new UsageError(`${e.message}; did you mean --${guess}?`, 'ERR_PARSE_ARGS_UNKNOWN_OPTION') : error;
}

export async function main(argv: string[]): Promise<number> {
  endQuietlyOnClosedPipe();
  const [command, ...args] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    const topic = args[0];
    if (topic === undefined || topic.startsWith('-')) console.log(overview());
    else if (Object.hasOwn(COMMANDS, topic)) console.log(helpText(COMMANDS[topic]!.spec));
    else return unknownCommand(topic, args.includes('--json'));
    return 0;
  }
  if (command === '--version' || command === '-V' || command === '-v') {
    console.log(version());
    return 0;
  }
  // An own property only: 'constructor' or '__proto__' is not a command.
  const entry = Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : undefined;
  if (!entry) return unknownCommand(command, argv.includes('--json'));
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
    return fail(command, withOptionGuess(error, entry.spec), true, json);
  }
  try {
    return await entry.run(args);
  } catch (error) {
    // Anything may be thrown (a listener's string, null): report it, never crash on it.
    const usage = error instanceof UsageError || (typeof (error as { code?: unknown } | null)?.code === 'string' && (error as { code: string }).code.startsWith('ERR_PARSE_ARGS'));
    return fail(command, error instanceof Error ? error : new Error(`non-error thrown: ${messageOf(error)}`), usage, json);
  }
}
