// A command's options, declared once: the same table parses its arguments (node:util
// parseArgs, strict) and writes its --help, so the two cannot drift apart.

import { parseArgs } from 'node:util';
import { UsageError } from './usage-error';

/** One option: how parseArgs reads it, and how --help shows it. */
export interface OptionSpec {
  readonly type: 'string' | 'boolean';
  readonly multiple?: boolean;
  /** The value's placeholder in help (`S`, `BDF`, `FILE`); string options only. */
  readonly value?: string;
  /** The command cannot run without it (checked by the command; shown without brackets). */
  readonly required?: boolean;
  /** One line (or a few, joined by \n) on what the option does and its default. */
  readonly help: string;
}

export type OptionTable = Readonly<Record<string, OptionSpec>>;

/** What a command is: its name, its one-line summary, its arguments, options and examples. */
export interface CommandSpec<Options extends OptionTable = OptionTable> {
  readonly name: string;
  /** One line for `guestmem --help`. */
  readonly summary: string;
  /** The positional arguments as the usage line shows them (`[FILE|-]`, `PROGRAM`); none if absent. */
  readonly positionals?: string;
  /** The longest list of positionals allowed (default: none when `positionals` is absent, else 1). */
  readonly maxPositionals?: number;
  /** A suffix for the usage line, after the options (`-- <command> [args]`). */
  readonly trailer?: string;
  readonly options: Options;
  /** Paragraphs that say what the command does, exit codes and output shapes. */
  readonly description: string;
  readonly examples: readonly string[];
}

/** Every command takes these; `main` answers them before the command runs. */
export const COMMON_OPTIONS = {
  help: { type: 'boolean', help: 'this help' },
} as const satisfies OptionTable;

type ValueOf<O extends OptionSpec> = O['type'] extends 'boolean'
  ? (O['multiple'] extends true ? boolean[] : boolean)
  : (O['multiple'] extends true ? string[] : string);

/** The parsed values of a table: each option's value, or undefined where not given. */
export type OptionValues<Options extends OptionTable> = { -readonly [K in keyof Options]?: ValueOf<Options[K]> };

export interface ParsedCommand<Options extends OptionTable> {
  values: OptionValues<Options> & { help?: boolean };
  positionals: string[];
}

/**
 * Parses `args` against the command's table. Any unknown option, a missing value, a value
 * given to a flag or too many positionals is a UsageError (exit 2) found before the command
 * does anything.
 */
export function parseCommand<Options extends OptionTable>(spec: CommandSpec<Options>, args: string[]): ParsedCommand<Options> {
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }> = {};
  const table: OptionTable = { ...spec.options, ...COMMON_OPTIONS };
  for (const [name, option] of Object.entries(table)) {
    options[name] = { type: option.type, ...(option.multiple ? { multiple: true } : {}) };
  }
  options['help']!.short = 'h';
  let parsed: { values: Record<string, unknown>; positionals: string[] };
  try {
    parsed = parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    throw new UsageError((error as Error).message.replace(/\. To specify a positional argument.*$/s, ''), typeof code === 'string' ? code : undefined);
  }
  const max = spec.maxPositionals ?? (spec.positionals === undefined ? 0 : 1);
  if (!parsed.values['help'] && parsed.positionals.length > max) {
    throw new UsageError(max === 0
      ? `takes no arguments besides options, got '${parsed.positionals[0]}'`
      : `takes at most ${max} argument${max === 1 ? '' : 's'} (${spec.positionals}), got ${parsed.positionals.length}`);
  }
  return parsed as ParsedCommand<Options>;
}

function optionLabel(name: string, option: OptionSpec): string {
  return `--${name}${option.type === 'string' ? ` ${option.value ?? 'VALUE'}` : ''}${option.multiple ? ' ...' : ''}`;
}

/** The options of the table in its order, as a usage line shows them, then the trailer. */
function usageWords(spec: CommandSpec): string[] {
  const words = Object.entries(spec.options).map(([name, option]) => (option.required ? optionLabel(name, option) : `[${optionLabel(name, option)}]`));
  return spec.trailer ? [...words, spec.trailer] : words;
}

/** The command on one line, every option of the table in its order (docs/cli.md's command list). */
export function synopsis(spec: CommandSpec): string {
  return [`guestmem ${spec.name}`, ...(spec.positionals ? [spec.positionals] : []), ...usageWords(spec)].join(' ');
}

/** The usage line: every option of the table, in its order. */
export function usageLine(spec: CommandSpec): string {
  const head = `usage: guestmem ${spec.name}${spec.positionals ? ` ${spec.positionals}` : ''}`;
  const words = usageWords(spec);
  // Wrapped under the command's name, as man pages do, so a long table stays readable.
  const lines = [head];
  for (const word of words) {
    if (lines[lines.length - 1]!.length + 1 + word.length > 96) lines.push(' '.repeat(head.length));
    lines[lines.length - 1] += ` ${word}`;
  }
  return lines.join('\n');
}

/** The whole --help text of a command, from its spec. */
export function helpText(spec: CommandSpec): string {
  const table: OptionTable = { ...spec.options, ...COMMON_OPTIONS };
  const labels = Object.entries(table).map(([name, option]) => [optionLabel(name, option), option.help] as const);
  const width = Math.min(28, Math.max(...labels.map(([label]) => label.length)));
  const optionLines = labels.map(([label, help]) => {
    const [first, ...rest] = help.split('\n');
    const pad = ' '.repeat(width + 4);
    const head = label.length > width ? `  ${label}\n${pad}${first}` : `  ${label.padEnd(width)}  ${first}`;
    return [head, ...rest.map((line) => `${pad}${line}`)].join('\n');
  });
  return [
    usageLine(spec),
    spec.description.replace(/^/gm, '  '),
    'options:',
    ...optionLines,
    `example${spec.examples.length === 1 ? '' : 's'}:`,
    ...spec.examples.map((example) => `  ${example}`),
  ].join('\n');
}
