// The README, CONTRIBUTING.md and docs/ name only what exists: every `npm run X` is a script
// of package.json, every `guestmem COMMAND …` parses with that command's own option table
// (the one that parses a real command line), and every path of the repository they name is
// there. What runs only on a kernel cannot run here, but it cannot name a missing option.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { parseCommand, type CommandSpec } from '../../lib/cli/command-spec';
import { BENCH } from '../../lib/cli/bench-command';
import { CONVERT } from '../../lib/cli/convert-command';
import { DEMO } from '../../lib/cli/demo-command';
import { GUEST } from '../../lib/cli/guest-command';
import { PROBE } from '../../lib/cli/probe-command';
import { REPLAY, RUN, SIMULATE } from '../../lib/cli/script-commands';
import { VM } from '../../lib/cli/vm-command';
import { GUESTMEM } from '../support/cli';

const ROOT = path.resolve(path.dirname(GUESTMEM), '..');
const SPECS: Record<string, CommandSpec> = Object.fromEntries([PROBE, CONVERT, SIMULATE, RUN, REPLAY, GUEST, BENCH, DEMO, VM].map((spec) => [spec.name, spec]));

const PAGES = ['README.md', 'CONTRIBUTING.md', ...fs.readdirSync(path.join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];

/** Inline code spans and the lines of ```sh blocks of every page, with where they are. */
function snippets(): Array<{ page: string; text: string }> {
  const found: Array<{ page: string; text: string }> = [];
  for (const page of PAGES) {
    const markdown = fs.readFileSync(path.join(ROOT, page), 'utf8');
    for (const [, body] of markdown.matchAll(/^```sh\n([\s\S]*?)^```$/gm)) {
      for (const line of body!.split('\n')) if (line.trim() && !line.startsWith('#')) found.push({ page, text: line.replace(/\s+#.*$/, '') });
    }
    const prose = markdown.replace(/^```[\s\S]*?^```$/gm, '');
    for (const [, span] of prose.matchAll(/`([^`\n]+)`/g)) found.push({ page, text: span! });
  }
  return found;
}

describe('what the README and docs/ name exists', () => {
  const all = snippets();

  it('every npm run X is a script of package.json', () => {
    const scripts = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts;
    const named = all.flatMap(({ page, text }) => [...text.matchAll(/\bnpm run ([\w:-]+)/g)].map(([, name]) => ({ page, name: name! })));
    assert.ok(named.length > 10, 'the scan found the npm scripts');
    assert.deepEqual(named.filter(({ name }) => !(name in scripts)), []);
  });

  it('every guestmem command line parses with its command\'s option table', () => {
    let checked = 0;
    const refused: string[] = [];
    for (const { page, text } of all) {
      for (const [, line] of text.matchAll(/(?:^|&&\s*|npx\s+|\$\s+)guestmem\s+([^|;&]*)/g)) {
        // Placeholders (<command>, COMMAND, PROGRAM, …) and synopses ([--x]) are not command lines.
        if (/[[<]|\b[A-Z]{2,}\b/.test(line!)) continue;
        const words = line!.trim().split(/\s+/).filter(Boolean);
        const [name, ...args] = words;
        if (name === undefined || name.startsWith('-') || name === 'help') continue;
        const spec = SPECS[name];
        if (!spec) {
          refused.push(`${page}: guestmem ${line}: no command '${name}'`);
          continue;
        }
        const own = name === 'vm' && args.includes('--') ? args.slice(0, args.indexOf('--')) : args;
        try {
          parseCommand(spec, own);
          checked++;
        } catch (error) {
          refused.push(`${page}: guestmem ${line}: ${(error as Error).message}`);
        }
      }
    }
    assert.ok(checked >= 10, `only ${checked} command lines found`);
    assert.deepEqual(refused, []);
  });

  it('every path of the repository they name is there', () => {
    const missing: string[] = [];
    let checked = 0;
    for (const { page, text } of all) {
      for (const [, named] of text.matchAll(/^((?:scripts|bench|examples|test|lib|native|guest|soak|docs)\/[\w./*-]*)$/g)) {
        if (named!.startsWith('docs/api')) continue; // written by npm run docs
        const pattern = named!.replace(/\/$/, '');
        const dir = path.join(ROOT, path.dirname(pattern));
        const base = path.basename(pattern);
        const exists = base.includes('*')
          ? fs.existsSync(dir) && fs.readdirSync(dir).some((f) => new RegExp(`^${base.replace(/\./g, '\\.').replace(/\*/g, '.*')}$`).test(f))
          : [pattern, `${pattern}.ts`].some((p) => fs.existsSync(path.join(ROOT, p)));
        checked++;
        if (!exists) missing.push(`${page}: ${named}`);
      }
    }
    assert.ok(checked > 30, `only ${checked} paths found`);
    assert.deepEqual(missing, []);
  });
});
