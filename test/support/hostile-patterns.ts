// Every regular expression in lib/, and every parser that applies one to input, timed on
// 1 MB of adversarial text: a pattern whose backtracking grows faster than its input (the
// trace prefix's `\s*(?:…)?\s*` took 2.8 s on a 65,000-space line) hangs this group's
// child, which fails its test naming the pattern. The literals are found by parsing the
// sources, so a pattern added later is timed without being listed here.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { parseTrace } from '../../lib/cli/qemu-trace';
import { parseScript } from '../../lib/cli/conversion-script';
import { parseBytes, parseRange } from '../../lib/cli/sizes';
import { parseCount, parseCountList } from '../../lib/cli/counts';
import { parseVmTypeOption } from '../../lib/cli/vm-type-option';
import { parseRequirements } from '../../lib/cli/probe-command';
import { normalizeBdf } from '../../lib/vfio/vfio-sysfs';
import { bounded } from './hostile-values';

const MB = 1 << 20;
/** Linear work on 1 MB takes milliseconds; this is generous for a shared 2-core machine. */
const PATTERN_BOUND_MS = 1500;

/** Runs of what patterns match repeatedly, each followed by a character that fails them. */
const ADVERSARIAL: Array<[string, string]> = [
  ['spaces', ' '.repeat(MB)],
  ['spaces then x', `${' '.repeat(MB)}x`],
  ['tabs and spaces', '\t '.repeat(MB / 2)],
  ['digits then !', `${'1'.repeat(MB)}!`],
  ['hex digits then !', `0x${'f'.repeat(MB)}!`],
  ['pid@time prefixes', `${'1@1.1:'.repeat(MB / 6)}!`],
  ['a prefix then spaces', `1@1.1:${' '.repeat(MB)}x`],
  ['hashes', '#'.repeat(MB)],
  ['words', 'convert '.repeat(MB / 8)],
  ['a keyword then spaces', `kvm_convert_memory start 0x1 size 0x1 private_to_shared${' '.repeat(MB)}x`],
  ['a keyword then hex', `kvm_convert_memory start 0x${'0'.repeat(MB)}`],
  ['size suffixes', `${'1k'.repeat(MB / 2)}`],
  ['newlines', '\n'.repeat(MB)],
  ['letters', 'a'.repeat(MB)],
  ['colons and dots', `${'00:00.'.repeat(MB / 6)}9`],
];

/** Every regular-expression literal in the TypeScript sources under `dir`. */
function regexLiterals(dir: string): Array<{ where: string; pattern: RegExp }> {
  const found: Array<{ where: string; pattern: RegExp }> = [];
  // readdirSync's recursive withFileTypes lists only the top folder on Node 20.4 (the lowest
  // engines claims): the relative names it gives with a plain recursive listing work on all.
  for (const name of fs.readdirSync(dir, { recursive: true, encoding: 'utf8' })) {
    if (!name.endsWith('.ts') || name.endsWith('.d.ts')) continue;
    const file = path.join(dir, name);
    if (!fs.statSync(file).isFile()) continue;
    const source = ts.createSourceFile(file, fs.readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true);
    const visit = (node: ts.Node): void => {
      if (node.kind === ts.SyntaxKind.RegularExpressionLiteral) {
        const text = node.getText(source);
        const slash = text.lastIndexOf('/');
        const { line } = source.getLineAndCharacterOfPosition(node.getStart(source));
        found.push({ where: `${path.relative(dir, file)}:${line + 1} ${text}`, pattern: new RegExp(text.slice(1, slash), text.slice(slash + 1)) });
      }
      ts.forEachChild(node, visit);
    };
    visit(source);
  }
  return found;
}

/** The parsers that apply patterns built at run time (new RegExp) or several in turn. */
const PARSERS: Array<[string, (text: string) => unknown]> = [
  ['parseTrace', parseTrace],
  ['parseScript', (text) => parseScript(`block 1M\n${text}`)],
  ['parseBytes', (text) => parseBytes(text, 'size')],
  ['parseRange', (text) => parseRange(`${text}+${text}`, '--range')],
  ['parseCount', (text) => parseCount(text, 0, '--count', 0, 10)],
  ['parseCountList', (text) => parseCountList(text, [], '--pages', 'counts', 0, 10)],
  ['parseVmTypeOption', parseVmTypeOption],
  ['parseRequirements', (text) => parseRequirements([text, `vm-type=${text}`])],
  ['normalizeBdf', normalizeBdf],
];

async function inputPatterns(): Promise<void> {
  const literals = regexLiterals(path.join(__dirname, '..', '..', '..', 'lib'));
  assert.ok(literals.length >= 15, `found ${literals.length} regular expressions in lib/`);
  const targets: Array<[string, (text: string) => unknown]> = [
    ...literals.map(({ where, pattern }): [string, (text: string) => unknown] => [where, (text) => text.replace(pattern, '')]),
    ...PARSERS,
  ];
  for (const [what, apply] of targets) {
    for (const [name, text] of ADVERSARIAL) {
      const started = performance.now();
      // Refusals are expected (most of this is not valid input); only the time is judged.
      await bounded(`${what} on 1 MB of ${name}`, [], () => apply(text));
      const ms = performance.now() - started;
      assert.ok(ms <= PATTERN_BOUND_MS, `${what} took ${ms.toFixed(0)} ms on 1 MB of ${name}`);
    }
  }
}

export const PATTERN_GROUPS: Record<string, () => Promise<void>> = {
  'input-patterns': inputPatterns,
};
