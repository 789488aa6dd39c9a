// Command output: one JSON object with --json (bigints as decimal strings), else text.

export function jsonText(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
}

export function printJson(value: unknown): void {
  process.stdout.write(jsonText(value) + '\n');
}

/** A progress bar on stdout, only when stdout is a terminal and the work is long. */
export function progressBar(label: string, total: number): ((done: number) => void) | undefined {
  if (!process.stdout.isTTY || total < 1000) return undefined;
  let lastPercent = -1;
  return (done: number) => {
    const percent = Math.floor((done / total) * 100);
    if (percent === lastPercent) return;
    lastPercent = percent;
    const width = 30;
    const filled = Math.round((percent / 100) * width);
    process.stdout.write(`\r${label} [${'#'.repeat(filled)}${' '.repeat(width - filled)}] ${percent}%`);
    if (done >= total) process.stdout.write('\n');
  };
}
