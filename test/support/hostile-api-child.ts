// A child process that runs one group of hostile-input properties (hostile-api-groups.ts)
// and exits 0 when every property held. A property that fails prints fast-check's report
// (with the seed to replay it) and exits 1; a crash or a hang is seen by the parent.

import { GROUPS } from './hostile-api-groups';

const name = process.argv[2] ?? '';
const group = Object.hasOwn(GROUPS, name) ? GROUPS[name] : undefined;
if (!group) {
  console.error(`unknown group '${name}' (groups: ${Object.keys(GROUPS).join(', ')})`);
  process.exit(2);
}
group().then(
  () => {
    console.log(`group ${name}: every property held`);
  },
  (error: unknown) => {
    // fast-check's report, then what failed inside the property (its cause).
    console.error(error instanceof Error ? error.message : String(error));
    const cause = error instanceof Error ? error.cause : undefined;
    // eslint-disable-next-line @typescript-eslint/no-base-to-string -- a thrown non-Error is printed however it stringifies
    if (cause !== undefined) console.error(`cause: ${cause instanceof Error ? (cause.stack ?? cause.message) : String(cause)}`);
    process.exitCode = 1;
  },
);
