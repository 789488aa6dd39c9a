// The README's examples run as written: the ten-line library example against the package by
// its name (as a user's project imports it), printing what its last comment says, and the
// CLI example's commands printing the map the README shows.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { GUESTMEM } from '../support/cli';

const ROOT = path.resolve(path.dirname(GUESTMEM), '..');
const README = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');

/** The body of the first fenced block of `language` ('' for none) after `heading`. */
function fencedAfter(heading: string, language: string): string {
  const start = README.indexOf(`\n${heading}\n`);
  assert.ok(start >= 0, `README has no heading '${heading}'`);
  for (const block of README.slice(start).matchAll(/^```(\w*)\n([\s\S]*?)^```$/gm)) {
    if (block[1] === language) return block[2]!;
  }
  assert.fail(`no \`\`\`${language} block after '${heading}'`);
}

describe('README examples', () => {
  let project: string;

  before(() => {
    // An empty project whose node_modules/guestmem is this checkout, as `npm install` would make it.
    project = fs.mkdtempSync(path.join(os.tmpdir(), 'guestmem-readme-'));
    fs.mkdirSync(path.join(project, 'node_modules'));
    fs.symlinkSync(ROOT, path.join(project, 'node_modules', 'guestmem'), 'dir');
    fs.mkdirSync(path.join(project, 'node_modules', '.bin'));
    fs.symlinkSync(GUESTMEM, path.join(project, 'node_modules', '.bin', 'guestmem'));
  });

  after(() => fs.rmSync(project, { recursive: true, force: true }));

  it('the library in ten lines runs and prints what its comment says', () => {
    const code = fencedAfter('## The library in ten lines', 'js');
    assert.ok(code.trim().split('\n').length <= 10, 'ten lines at most');
    const promised = /console\.log\(.*\/\/ (.*)\n$/.exec(code)?.[1];
    assert.ok(promised, 'the last line prints, and its comment says what');
    fs.writeFileSync(path.join(project, 'example.mjs'), code);
    const result = spawnSync(process.execPath, ['example.mjs'], { cwd: project, encoding: 'utf8', timeout: 60_000 });
    assert.equal(result.status, 0, result.stderr);
    assert.equal(result.stdout.trim(), promised.trim());
  });

  it('the command in one picture prints the map shown', () => {
    const commands = fencedAfter('## The command in one picture', 'sh').trim().split('\n');
    const shown = fencedAfter('## The command in one picture', '');
    let output = '';
    for (const command of commands) {
      const result = spawnSync('sh', ['-c', command], {
        cwd: project,
        encoding: 'utf8',
        timeout: 60_000,
        // npx finds node_modules/.bin/guestmem and never asks the registry.
        env: { ...process.env, npm_config_offline: 'true' },
      });
      assert.equal(result.status, 0, `${command}: ${result.stderr}`);
      output += result.stdout;
    }
    // The timing line differs from run to run; everything else is as shown.
    const untimed = (text: string) => text.replace(/^conversions: .*$/m, 'conversions: …');
    assert.equal(untimed(output), untimed(shown));
  });
});
