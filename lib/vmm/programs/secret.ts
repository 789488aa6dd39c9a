// secret's host side (guest/secret.s): at sync 1 the page is private and holds the
// guest's secret: neither the memfd nor the device may see it; the host leaves a note in
// the memfd. At sync 2 the page is shared again: the guest read the note (its check 4) and
// left a message, which the memfd shows and the device reads by DMA. Then the guest asks
// for the page to be unplugged (PORT_PLUG, as virtio-mem's driver asks): at sync 3 the memfd
// has given it back (the message is gone) and the device cannot reach it; plugged back, at
// sync 4 the device reaches it again.

import type { ProgramContext, ProgramHost } from '../program-host';
import { PORT_PLUG, plugPort } from '../plug-port';
import { readShared, writeShared } from '../shared-bytes';

// The texts of guest/secret.s.
export const SECRET = Buffer.from('guestmem secret: a private page keeps this from the host and the device', 'latin1');
export const HOST_NOTE = Buffer.from('note from the host, through the shared memfd', 'latin1');
export const MESSAGE = Buffer.from('hello device: this page is shared, read it by DMA', 'latin1');
const MESSAGE_OFFSET = 2048n;
const PAGE = 4096;

export const secretProgram: ProgramHost = {
  description: 'a private page hides a secret from the host and the device; a shared page carries messages both ways',
  boot: (context) => ({ dataGpa: context.dataGpa, dataPages: 1 }),
  ports: (context) => new Map([[PORT_PLUG, plugPort(context.block, context.dataGpa, PAGE)]]),
  async onSync(step, _vcpu, context) {
    const page = context.dataGpa;
    if (step === 1) {
      const visible = readShared(context.block, page, PAGE).indexOf(SECRET) >= 0;
      context.check('memfd-hides-secret', !visible, visible ? 'the shared memfd shows the private page\'s secret' : 'the shared memfd does not hold the secret written to the private page');
      if (context.probe) {
        const reached = await context.probe.canRead(context.block, Number(page) - context.block.gpa, 0x5a);
        context.check('device-blocked', !reached, reached ? 'the device READ the private page by DMA' : 'the device cannot reach the private page by DMA');
      }
      writeShared(context.block, page, HOST_NOTE);
    } else if (step === 2) {
      await checkMessage(context);
    } else if (step === 3) {
      // Read before the probe, which writes its marker through the memfd.
      const emptied = readShared(context.block, page, PAGE).every((b) => b === 0);
      context.check('memfd-gives-back', emptied, emptied ? 'the unplugged page was given back: the memfd reads zeros where the message was' : 'the unplugged page still holds data in the memfd');
      if (context.probe) {
        const reached = await context.probe.canRead(context.block, Number(page) - context.block.gpa, 0x3c);
        context.check('device-loses-unplugged', !reached, reached ? 'the device READ the unplugged page by DMA' : 'the device cannot reach the unplugged page by DMA');
      }
    } else if (step === 4 && context.probe) {
      const reached = await context.probe.canRead(context.block, Number(page) - context.block.gpa, 0xc3);
      context.check('device-reaches-plugged', reached, reached ? 'plugged back, the shared page is the device\'s again' : 'the device cannot reach the page plugged back');
    }
  },
};

/** The guest left its message in the shared page: the memfd shows it, and the device reads it by DMA. */
export async function checkMessage(context: ProgramContext): Promise<void> {
  const at = context.dataGpa + MESSAGE_OFFSET;
  const seen = readShared(context.block, at, MESSAGE.length).equals(MESSAGE);
  context.check('memfd-shows-message', seen, seen ? 'the shared memfd holds the guest\'s message' : 'the guest\'s message is NOT in the shared memfd');
  if (context.probe) {
    const read = await context.probe.read(Number(at), MESSAGE.length);
    const ok = read.equals(MESSAGE);
    context.check('device-reads-message', ok, ok ? 'the device read the guest\'s message by DMA' : `the device read ${JSON.stringify(read.toString('latin1'))} instead of the message`);
  }
}
