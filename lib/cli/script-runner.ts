// Executes a conversion script against a host: the tracker alone (`simulate`) or a real VM
// (`run`). Listeners are RecordingListeners, wrapping the host's real listener where it has
// one, so the report says what each listener really holds.

import { toGranuleRange, type Bytes } from '../common/byte-range';
import { isRejection, messageOf } from '../common/errors';
import { errorCode } from './error-code';
import { PageBitmap, type Run } from '../tracker/page-bitmap';
import { blockGeometry, type RamBlockAttributes, type StateChangeResult } from '../tracker/ram-block-attributes';
import type { RamDiscardListener } from '../tracker/ram-discard-listener';
import { RecordingListener } from '../tracker/recording-listener';
import type { PageState } from '../tracker/page-state';
import type { ScriptOp } from './conversion-script';
import { ScriptError } from './conversion-script';
import { PlugSource, type PlugState } from '../tracker/plug-source';

/** Where a script runs: one block, its listeners, its conversions. */
export interface ScriptHost {
  /** Creates the block (plug blocks of `plugBlock` bytes, default the granule) and returns its tracker. */
  openBlock(size: Bytes, granule: number, plugBlock?: number): RamBlockAttributes;
  /** The block's plug source, after openBlock. */
  plugSource(): PlugSource;
  /** Plugs or unplugs a range (block-relative): listeners hold what is shared and plugged. */
  plug(offset: Bytes, size: Bytes, to: PlugState): Promise<unknown>;
  /** The real listener for a `listen` line, or null for a recording listener alone. */
  makeListener(id: string, offset: Bytes, size: Bytes): RamDiscardListener | null;
  convert(offset: Bytes, size: Bytes, to: PageState): Promise<StateChangeResult>;
  /**
   * Optional fast path: true when convertSync can run the next conversion at once (every
   * listener synchronous, nothing in flight); the runner then calls it instead of convert,
   * with no promise per conversion.
   */
  canConvertSync?(): boolean;
  convertSync?(offset: Bytes, size: Bytes, to: PageState): StateChangeResult;
  /** Releases everything: listeners first (unmapping what they hold), then the block and VM. */
  shutdown(): Promise<void>;
}

export interface ConversionRecord {
  offset: Bytes;
  size: Bytes;
  to: PageState;
  outcome: 'done' | 'rejected' | 'failed';
  /** Why a conversion was rejected or failed: the error's code (ERR_GUESTMEM_FAILED when it had none). */
  code?: string;
  /** Why a conversion was rejected or failed: the error's message. */
  reason?: string;
}

export interface ScriptReport {
  granule: number;
  pages: number;
  shared: Run[];
  /** Runs of unplugged pages (empty when the script plugs nothing out). */
  unplugged: Run[];
  listeners: Record<string, { mapped: Run[]; errors: number }>;
  rejected: number;
  /** Conversions, plugs and unplugs the kernel or a listener failed (never in a simulation). */
  failed: number;
  /** Convert lines executed, rejected ones included. */
  ops: number;
  /** Plug and unplug lines executed, rejected ones included (their rejections count in `rejected`). */
  plugs: number;
  /** Time inside convert lines only: one clock reading around each run of consecutive converts. */
  elapsedNs: number;
  /** One record per convert line, kept only when asked (RunOptions.history). */
  history: ConversionRecord[];
  failures: string[];
}

/**
 * The most memory the recording listeners of one script may hold at once (each keeps a
 * bitmap of its section): 1 GiB. Past it the script is refused at the listen line that would
 * cross it, before anything is allocated.
 */
export const MAX_RECORDING_BYTES = 2 ** 30;

function scriptError(line: number, error: unknown, prefix = ''): ScriptError {
  return new ScriptError(line, `${prefix}${(error as Error).message}`);
}

/**
 * Checks a script's structure before it runs, touching nothing: the block (geometry and the
 * bitmap bound), every listen section (inside the block), listener ids (not listening
 * twice, unlisten only what listens) and the memory of the recording listeners. So a
 * script that would stop half way with a usage error stops before its first line runs,
 * before a VM exists. Invalid conversions are not usage errors: they are counted as rejected.
 */
export function checkScript(ops: ScriptOp[]): void {
  const block = ops[0];
  if (block?.op !== 'block') throw new ScriptError(block?.line ?? 1, "the script has no 'block' line");
  let geometry: { granularity: number; granules: number };
  try {
    geometry = blockGeometry(block.size, { granularity: block.granule });
    // The plug geometry too (a whole number of plug blocks of a power-of-two multiple of the granule).
    if (block.plugBlock !== undefined) void new PlugSource(geometry.granules, geometry.granularity, block.plugBlock);
  } catch (error) {
    throw scriptError(block.line, error);
  }
  // Each listener's bitmap bytes, by id, and their sum.
  const listening = new Map<string, number>();
  let recordingBytes = 0;
  for (const op of ops) {
    if (op.op === 'listen') {
      if (listening.has(op.id)) throw new ScriptError(op.line, `listener '${op.id}' is already listening`);
      let bytes: number;
      try {
        bytes = PageBitmap.bytesFor(toGranuleRange(op.offset, op.size, geometry.granularity, geometry.granules, 'section').count);
      } catch (error) {
        throw scriptError(op.line, error, `listen ${op.id}: `);
      }
      listening.set(op.id, bytes);
      recordingBytes += bytes;
      if (recordingBytes > MAX_RECORDING_BYTES) {
        throw new ScriptError(
          op.line,
          `listen ${op.id}: ${listening.size} listeners at once would record ${recordingBytes} bytes of bitmaps, ` +
            `above the bound of ${MAX_RECORDING_BYTES} (one bitmap of its section each): unlisten some first, or use a larger granule`,
        );
      }
    } else if (op.op === 'unlisten') {
      const bytes = listening.get(op.id);
      if (bytes === undefined) throw new ScriptError(op.line, `no listener '${op.id}' to unlisten`);
      listening.delete(op.id);
      recordingBytes -= bytes;
    }
  }
}

export interface RunOptions {
  onProgress?: (done: number, total: number) => void;
  /** Keep a record of every conversion (for --history and the --svg timeline); default off. */
  history?: boolean;
}

export async function runScript(
  ops: ScriptOp[],
  host: ScriptHost,
  { onProgress, history = false }: RunOptions = {},
): Promise<{ report: ScriptReport; attributes: RamBlockAttributes }> {
  checkScript(ops);
  let attributes: RamBlockAttributes | null = null;
  const listeners = new Map<string, RecordingListener>();
  const report: ScriptReport = {
    // Listener ids are the user's words: keys of an object without a prototype, so that an
    // id such as __proto__ or constructor is a key like any other.
    granule: 0, pages: 0, shared: [], unplugged: [], listeners: Object.create(null) as ScriptReport['listeners'], rejected: 0, failed: 0, ops: 0, plugs: 0, elapsedNs: 0, history: [], failures: [],
  };
  let runStart: bigint | null = null;
  const closeRun = () => {
    if (runStart !== null) report.elapsedNs += Number(process.hrtime.bigint() - runStart);
    runStart = null;
  };

  for (let index = 0; index < ops.length; index++) {
    const op = ops[index]!;
    onProgress?.(index, ops.length);
    if (op.op !== 'convert') closeRun();
    switch (op.op) {
      case 'block':
        try {
          attributes = host.openBlock(op.size, op.granule, op.plugBlock);
        } catch (error) {
          throw new ScriptError(op.line, (error as Error).message);
        }
        report.granule = attributes.granularity;
        report.pages = attributes.granules;
        break;
      case 'listen': {
        if (listeners.has(op.id)) throw new ScriptError(op.line, `listener '${op.id}' is already listening`);
        let listener: RecordingListener;
        try {
          const inner = host.makeListener(op.id, op.offset, op.size) ?? undefined;
          const section = attributes!.sectionRange({ offset: op.offset, size: op.size });
          listener = new RecordingListener(op.id, attributes!.granules, { inner, section: { first: section.first, count: section.count } });
          await attributes!.register(listener, { offset: op.offset, size: op.size });
        } catch (error) {
          throw new ScriptError(op.line, `listen ${op.id}: ${(error as Error).message}`);
        }
        listeners.set(op.id, listener);
        break;
      }
      case 'unlisten': {
        const listener = listeners.get(op.id);
        if (!listener) throw new ScriptError(op.line, `no listener '${op.id}' to unlisten`);
        try {
          await attributes!.unregister(listener);
        } catch (error) {
          throw new ScriptError(op.line, `unlisten ${op.id}: ${(error as Error).message}`);
        }
        listeners.delete(op.id);
        break;
      }
      case 'convert': {
        runStart ??= process.hrtime.bigint();
        report.ops++;
        let outcome: ConversionRecord['outcome'] = 'done';
        let why: Pick<ConversionRecord, 'code' | 'reason'> = {};
        try {
          if (host.canConvertSync?.()) host.convertSync!(op.offset, op.size, op.to);
          else await host.convert(op.offset, op.size, op.to);
        } catch (error) {
          if (history) why = { code: errorCode(error), reason: messageOf(error) };
          if (isRejection(error)) {
            outcome = 'rejected';
            report.rejected++;
          } else {
            outcome = 'failed';
            report.failed++;
            report.failures.push(`line ${op.line}: ${(error as Error).message}`);
          }
        }
        if (history) report.history.push({ offset: op.offset, size: op.size, to: op.to, outcome, ...why });
        break;
      }
      case 'plug':
      case 'unplug':
        report.plugs++;
        try {
          await host.plug(op.offset, op.size, op.op === 'plug' ? 'plugged' : 'unplugged');
        } catch (error) {
          if (isRejection(error)) report.rejected++;
          else {
            report.failed++;
            report.failures.push(`line ${op.line}: ${(error as Error).message}`);
          }
        }
        break;
    }
  }
  closeRun();
  onProgress?.(ops.length, ops.length);
  report.shared = attributes!.runs('shared');
  report.unplugged = host.plugSource().runs('unplugged');
  for (const [id, listener] of listeners) report.listeners[id] = { mapped: listener.mappedRuns(), errors: listener.errors };
  return { report, attributes: attributes! };
}
