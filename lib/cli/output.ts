// Command output: one JSON object with --json (bigints as decimal strings), else text.

export function jsonText(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
}

/**
 * Top-level arrays longer than this are written a slice at a time: a 10 M-entry --history
 * as one string passes V8's longest string ("Invalid string length" after the whole run).
 */
const JSON_SLICE = 4096;

/** Writes one JSON object; its long top-level arrays are streamed, the text is the same. */
export function printJson(value: unknown): void {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    process.stdout.write(jsonText(value) + '\n');
    return;
  }
  let separator = '{';
  for (const [key, item] of Object.entries(value)) {
    if (item === undefined || typeof item === 'function' || typeof item === 'symbol') continue;
    process.stdout.write(`${separator}${JSON.stringify(key)}:`);
    separator = ',';
    if (!Array.isArray(item) || item.length <= JSON_SLICE) {
      process.stdout.write(jsonText(item));
      continue;
    }
    for (let i = 0; i < item.length; i += JSON_SLICE) {
      const slice = jsonText(item.slice(i, i + JSON_SLICE));
      process.stdout.write(`${i === 0 ? '[' : ','}${slice.slice(1, -1)}`);
    }
    process.stdout.write(']');
  }
  process.stdout.write(separator === '{' ? '{}\n' : '}\n');
}

/** What a command's --json failure says, in the one documented shape: `{ error: { code, message } }`. */
export interface JsonFailure {
  code: string;
  message: string;
}

/**
 * The `error` member of a report whose command exits 1: the first failure's code, every
 * failure's message. Empty when nothing failed, so a report spreads it in unconditionally.
 */
export function failureJson(failures: JsonFailure[]): { error?: JsonFailure } {
  if (failures.length === 0) return {};
  return { error: { code: failures[0]!.code, message: failures.map((f) => f.message).join('; ') } };
}

/**
 * A progress bar on stderr (as a kernel build's progress is: stdout is the output, which a
 * pipe may take), only when stderr is a terminal and the work is long: `total` (steps, or
 * bytes) at least `minimum`.
 */
export function progressBar(label: string, total: number, minimum = 1000): ((done: number) => void) | undefined {
  if (!process.stderr.isTTY || total < minimum) return undefined;
  let lastPercent = -1;
  return (done: number) => {
    const percent = Math.floor((done / total) * 100);
    if (percent === lastPercent) return;
    lastPercent = percent;
    const width = 30;
    const filled = Math.round((percent / 100) * width);
    process.stderr.write(`\r${label} [${'#'.repeat(filled)}${' '.repeat(width - filled)}] ${percent}%`);
    if (done >= total) process.stderr.write('\n');
  };
}
