// Workers terminated while they call the addon in a loop, each call throwing: an errno
// error, an argument error, a constructor's error, a vCPU runner's refusal. A terminating
// Worker's environment cannot take a JS exception any more; node-addon-api then threw a
// second C++ exception from its own catch handler and the whole process aborted
// ("terminate called after throwing an instance of 'Napi::Error'"). The parent test runs
// this in a child process and expects it to end normally, with every round counted.

import { Worker } from 'node:worker_threads';

const ROUNDS = Number(process.env.GUESTMEM_TERMINATE_ROUNDS ?? 200);

// Runs in the worker: say it is calling, then call until terminated.
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { native } = require(${JSON.stringify(require.resolve('../../lib/common/native'))});
const addon = native();
const calls = [
  () => addon.fallocate(-1, 0, 0, 4096),           // EBADF from the kernel
  () => addon.kvmGetApiVersion(-5),                 // a bad fd refused by the addon
  () => addon.fallocate('no', 0, 0, 4096),          // a wrong type
  () => new addon.VcpuRunner(-1, 0, new Uint8Array(1), () => {}), // a constructor's refusal
  () => addon.munmap({}),                           // not a mapping handle
];
let told = false;
for (let i = 0; ; i++) {
  try { calls[i % calls.length](); } catch {}
  if (!told && i > calls.length) { parentPort.postMessage('calling'); told = true; }
}
`;

async function main(): Promise<void> {
  let terminated = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const worker = new Worker(WORKER_SOURCE, { eval: true });
    await new Promise<void>((resolve, reject) => {
      worker.once('message', () => resolve());
      worker.once('error', reject);
    });
    // A random moment inside the loop, so that termination lands in every part of a call.
    await new Promise((resolve) => setTimeout(resolve, Math.random() * 2));
    await worker.terminate();
    terminated++;
  }
  process.stdout.write(JSON.stringify({ terminated }) + '\n');
}

main().catch((error) => {
  process.stderr.write(String(error?.stack ?? error) + '\n');
  process.exit(1);
});
