// A typedoc plugin: each export of the package is shown under the part of guestmem it comes
// from, the folder of lib/ that declares it (lib/tracker -> Tracker, lib/vfio -> VFIO, …), so
// the API docs follow the layering CONTRIBUTING.md describes without a @category tag to keep
// in step on every declaration (an explicit @category in a doc comment still wins). And the
// classes and functions a user starts from get their @example from docs/examples/<Name>.ts:
// whole programs against the package's name, which test/unit/public-types.test.ts compiles
// under strict settings, so an example in the docs cannot stop compiling unseen.
import fs from 'node:fs';
import path from 'node:path';
import { Comment, CommentTag, Converter, ReflectionKind } from 'typedoc';

/** lib/'s folders, as the docs name them; lib/host/ (probe()) and lib/common/ are "Host and common". */
const PARTS = {
  tracker: 'Tracker',
  memory: 'Memory',
  kvm: 'KVM',
  vfio: 'VFIO',
  vmm: 'VMM',
  common: 'Host and common',
  host: 'Host and common',
};

const EXAMPLES = path.resolve('docs', 'examples');

/** docs/examples/<Name>.ts by export name. */
function examples() {
  const found = new Map();
  for (const file of fs.readdirSync(EXAMPLES)) {
    if (file.endsWith('.ts')) found.set(path.basename(file, '.ts'), fs.readFileSync(path.join(EXAMPLES, file), 'utf8'));
  }
  return found;
}

/** @param {import('typedoc').Application} app */
export function load(app) {
  const byName = examples();
  app.converter.on(Converter.EVENT_CREATE_DECLARATION, (context, reflection) => {
    if (reflection.parent?.kind !== ReflectionKind.Module && reflection.parent?.kind !== ReflectionKind.Project) return;
    const symbol = context.getSymbolFromReflection(reflection);
    const file = symbol?.declarations?.[0]?.getSourceFile().fileName;
    if (!file) return;
    const folder = path.relative(path.resolve('lib'), path.dirname(file)).split(path.sep)[0] || '.';
    const part = PARTS[folder];
    if (!part) return;
    reflection.comment ??= new Comment();
    const tags = reflection.comment.blockTags;
    if (!tags.some((tag) => tag.tag === '@category')) tags.push(new CommentTag('@category', [{ kind: 'text', text: part }]));
    const example = byName.get(reflection.name);
    if (example !== undefined && !tags.some((tag) => tag.tag === '@example')) {
      tags.push(new CommentTag('@example', [{ kind: 'code', text: `\`\`\`ts\n${example.trimEnd()}\n\`\`\`` }]));
    }
  });
}
