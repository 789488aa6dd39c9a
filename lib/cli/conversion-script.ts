// The conversion script read by `simulate` and `run`:
//   block <bytes> [granule] [plug-block]  one RAM block; granule defaults to 4096, the
//                                    plug block (virtio-mem's block size) to the granule
//   listen <id> <offset> <size>      register a listener on a section of it
//   unlisten <id>
//   convert <offset> <size> shared|private
//   plug <offset> <size>             plug or unplug whole plug blocks: listeners hold
//   unplug <offset> <size>           what is shared and plugged
// Blank lines and # comments are ignored; a malformed line is a UsageError naming its line.
// Numbers are exact (bigints past 2^53) and may be 2^64 or more: such a conversion is
// rejected and counted when it runs, like any other invalid one; only text that is not a
// number makes a line malformed.

import type { Bytes } from '../common/byte-range';
import { parseBytes } from './sizes';
import { UsageError } from './usage-error';

export type ScriptOp =
  | { op: 'block'; line: number; size: Bytes; granule: number; plugBlock?: number }
  | { op: 'listen'; line: number; id: string; offset: Bytes; size: Bytes }
  | { op: 'unlisten'; line: number; id: string }
  | { op: 'convert'; line: number; offset: Bytes; size: Bytes; to: 'shared' | 'private' }
  | { op: 'plug' | 'unplug'; line: number; offset: Bytes; size: Bytes };

export class ScriptError extends UsageError {
  constructor(readonly line: number, message: string) {
    super(`line ${line}: ${message}`);
  }
}

function expectArgs(words: string[], line: number, count: number[], form: string): void {
  if (!count.includes(words.length - 1)) throw new ScriptError(line, `expected '${form}', got '${words.join(' ')}'`);
}

function size(text: string, line: number, what: string): Bytes {
  try {
    return parseBytes(text, what);
  } catch (error) {
    throw new ScriptError(line, (error as Error).message);
  }
}

const KEYWORDS = ['block', 'listen', 'unlisten', 'convert', 'plug', 'unplug'];

function unknownKeyword(keyword: string): string {
  const lower = keyword.toLowerCase();
  const hint = lower !== keyword && KEYWORDS.includes(lower) ? `; keywords are lowercase: '${lower}'` : '';
  return `unknown keyword '${keyword}' (expected block, listen, unlisten, convert, plug or unplug${hint})`;
}

export function parseScript(text: string): ScriptOp[] {
  const ops: ScriptOp[] = [];
  let haveBlock = false;
  text.split('\n').forEach((raw, index) => {
    const line = index + 1;
    const words = raw.replace(/#.*/, '').trim().split(/\s+/).filter(Boolean);
    if (words.length === 0) return;
    const [keyword] = words;
    if (!KEYWORDS.includes(keyword!)) throw new ScriptError(line, unknownKeyword(keyword!));
    if (keyword !== 'block' && !haveBlock) throw new ScriptError(line, `'${keyword}' before any 'block' line`);
    switch (keyword) {
      case 'block':
        if (haveBlock) throw new ScriptError(line, 'a script has one block; this is a second');
        expectArgs(words, line, [1, 2, 3], 'block <bytes> [granule] [plug-block]');
        ops.push({
          op: 'block', line, size: size(words[1]!, line, 'block size'), granule: words[2] ? Number(size(words[2], line, 'granule')) : 4096,
          ...(words[3] ? { plugBlock: Number(size(words[3], line, 'plug block')) } : {}),
        });
        haveBlock = true;
        return;
      case 'listen':
        expectArgs(words, line, [3], 'listen <id> <offset> <size>');
        ops.push({ op: 'listen', line, id: words[1]!, offset: size(words[2]!, line, 'offset'), size: size(words[3]!, line, 'size') });
        return;
      case 'unlisten':
        expectArgs(words, line, [1], 'unlisten <id>');
        ops.push({ op: 'unlisten', line, id: words[1]! });
        return;
      case 'convert': {
        expectArgs(words, line, [3], 'convert <offset> <size> shared|private');
        const to = words[3];
        if (to !== 'shared' && to !== 'private') throw new ScriptError(line, `convert target must be 'shared' or 'private', got '${to}'`);
        ops.push({ op: 'convert', line, offset: size(words[1]!, line, 'offset'), size: size(words[2]!, line, 'size'), to });
        return;
      }
      case 'plug':
      case 'unplug':
        expectArgs(words, line, [2], `${keyword} <offset> <size>`);
        ops.push({ op: keyword, line, offset: size(words[1]!, line, 'offset'), size: size(words[2]!, line, 'size') });
        return;
      default:
        throw new ScriptError(line, unknownKeyword(keyword!));
    }
  });
  if (!haveBlock) throw new ScriptError(1, "the script has no 'block' line");
  return ops;
}
