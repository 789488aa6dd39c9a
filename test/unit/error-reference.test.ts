// docs/errors.md is the one error reference: every code the library, the addon and the CLI
// can produce has a heading there, and every code it documents is one of them (or Node's
// parseArgs'), so the page can neither miss a code nor keep one that is gone.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { GUESTMEM } from '../support/cli';

const ROOT = path.resolve(path.dirname(GUESTMEM), '..');

function sources(dir: string, pattern: RegExp): string[] {
  return fs.readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((file) => pattern.test(file))
    .map((file) => fs.readFileSync(path.join(dir, file), 'utf8'));
}

/** Every ERR_ code named in lib/ and native/ (code, comments and all): `ERR_X` whole, not a prefix. */
function codesInSources(): Map<string, boolean> {
  const codes = new Map<string, boolean>();
  const texts = [...sources(path.join(ROOT, 'lib'), /\.ts$/), ...sources(path.join(ROOT, 'native'), /\.(cc|h)$/)];
  for (const text of texts) {
    // A code tested as a prefix ('ERR_PARSE_ARGS' in startsWith) is a family, documented as its members.
    for (const [, code, after] of text.matchAll(/\b(ERR_[A-Z0-9]+(?:_[A-Z0-9]+)*)\b(_?)/g)) {
      if (after === '_') continue;
      const prefix = new RegExp(`startsWith\\('${code}'\\)`).test(text);
      codes.set(code!, (codes.get(code!) ?? false) || prefix);
    }
  }
  return codes;
}

/** The codes docs/errors.md documents: those in backquotes in its headings. */
function documentedCodes(): Set<string> {
  const page = fs.readFileSync(path.join(ROOT, 'docs', 'errors.md'), 'utf8');
  const codes = new Set<string>();
  for (const [heading] of page.matchAll(/^#{2,4} .*$/gm)) {
    for (const [, code] of heading.matchAll(/`(ERR_[A-Z0-9_]+)`/g)) codes.add(code!);
  }
  return codes;
}

describe('docs/errors.md, the error reference', () => {
  const documented = documentedCodes();

  it('documents every code used in lib/ and native/ under a heading of its own', () => {
    const used = codesInSources();
    assert.ok(used.size >= 25, `found only ${used.size} codes: the scan is broken`);
    const missing = [...used].filter(([code, prefix]) => prefix
      ? ![...documented].some((d) => d.startsWith(`${code}_`))
      : !documented.has(code)).map(([code]) => code);
    assert.deepEqual(missing, [], `docs/errors.md lacks a heading for: ${missing.join(', ')}`);
  });

  it('documents every code of the GuestmemErrorDetails table', () => {
    const errors = fs.readFileSync(path.join(ROOT, 'lib', 'common', 'errors.ts'), 'utf8');
    const table = /^export interface GuestmemErrorDetails \{\n([\s\S]*?)^\}/m.exec(errors)?.[1];
    assert.ok(table, 'GuestmemErrorDetails in lib/common/errors.ts');
    // A row is a code at the table's own indent; the details' fields sit deeper.
    const members = [...table.matchAll(/^ {2}(ERR_[A-Z0-9_]+):/gm)].map(([, code]) => code!);
    assert.ok(members.length > 10);
    assert.deepEqual(members.filter((code) => !documented.has(code)), []);
  });

  it('documents no code that nothing produces (Node\'s parseArgs codes aside)', () => {
    const used = codesInSources();
    const stale = [...documented].filter((code) => !used.has(code) && !code.startsWith('ERR_PARSE_ARGS_'));
    assert.deepEqual(stale, [], `docs/errors.md documents codes nothing uses: ${stale.join(', ')}`);
  });

  it('is linked from the README and from the API docs\' front page', () => {
    const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    assert.match(readme, /\]\(docs\/errors\.md\)/);
    const typedoc = JSON.parse(fs.readFileSync(path.join(ROOT, 'typedoc.json'), 'utf8')) as { readme?: string; projectDocuments?: string[] };
    assert.equal(typedoc.readme, 'README.md');
    assert.ok((typedoc.projectDocuments ?? []).includes('docs/errors.md'), 'typedoc publishes the page itself');
    const errors = fs.readFileSync(path.join(ROOT, 'lib', 'common', 'errors.ts'), 'utf8');
    assert.match(errors, /docs\/errors\.md/, 'GuestmemError\'s doc comment points at the page');
  });
});
