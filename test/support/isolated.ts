// Runs a case in a child process, so that a crash (a signal, an abort) or a hang fails the
// case instead of killing mocha: exit status, signal, wall time and peak memory come back.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface IsolatedResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
  timedOut: boolean;
  /** Peak resident memory of the child in KiB (null if it died before reporting). */
  maxRssKiB: number | null;
}

export interface IsolatedOptions {
  /** Bytes on stdin, or a file opened as stdin (such as /dev/zero). */
  input?: string | Buffer;
  stdinFile?: string;
  timeoutMs: number;
  env?: Record<string, string>;
}

/** Preloaded into the child: writes its peak RSS where GUESTMEM_TEST_RSS_FILE says, at exit. */
const RSS_PRELOAD = path.join(__dirname, 'report-rss.js');
/** Output past this much is cut: a runaway child must not fill the test's memory either. */
const MAX_OUTPUT = 1 << 20;

/** Runs `node [--require report-rss] script args` in a child and waits for it, killing it at the timeout. */
export function runNodeIsolated(script: string, args: string[], options: IsolatedOptions): Promise<IsolatedResult> {
  const rssFile = path.join(os.tmpdir(), `guestmem-rss-${process.pid}-${Math.random().toString(36).slice(2)}`);
  const stdin = options.stdinFile !== undefined ? fs.openSync(options.stdinFile, 'r') : 'pipe';
  const started = process.hrtime.bigint();
  const child = spawn(process.execPath, ['--require', RSS_PRELOAD, script, ...args], {
    stdio: [stdin, 'pipe', 'pipe'],
    env: { ...process.env, ...options.env, GUESTMEM_TEST_RSS_FILE: rssFile },
  });
  if (typeof stdin === 'number') fs.closeSync(stdin);
  else {
    child.stdin!.on('error', () => {}); // a child that exits before reading all of it
    child.stdin!.end(options.input ?? '');
  }
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    if (stdout.length < MAX_OUTPUT) stdout += chunk.toString('utf8');
  });
  child.stderr!.on('data', (chunk: Buffer) => {
    if (stderr.length < MAX_OUTPUT) stderr += chunk.toString('utf8');
  });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, options.timeoutMs);
  return new Promise((resolve, reject) => {
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      let maxRssKiB: number | null = null;
      try {
        maxRssKiB = Number(fs.readFileSync(rssFile, 'utf8'));
        fs.rmSync(rssFile);
      } catch {
        // The child died before its exit handler ran; status and signal say how.
      }
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      resolve({ status, signal, stdout, stderr, ms, timedOut, maxRssKiB });
    });
  });
}

/** Maps `items` through `run` with at most `concurrency` at a time, results in order. */
export async function inPool<T, R>(items: T[], concurrency: number, run: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await run(items[index]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
  return results;
}

/** Children at once: this machine's cores, at most 3 (others share it). */
export const CHILD_CONCURRENCY = Math.max(1, Math.min(3, os.availableParallelism()));
