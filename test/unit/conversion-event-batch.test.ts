// A vCPU thread's conversion events packed into one transferred buffer: every field comes
// back as the loop made it, across a real thread boundary, and a full batch leaves the
// packer empty with a fresh buffer.

import assert from 'node:assert/strict';
import { MessageChannel, receiveMessageOnPort } from 'node:worker_threads';
import { EventPacker, unpackEvents, type PackedEvents } from '../../lib/vmm/conversion-event-batch';
import type { ConversionEvent } from '../../lib/vmm/vmm-loop';

const EVENTS: ConversionEvent[] = [
  { vcpu: 0, source: 'hypercall', gpa: 0x1100000n, size: 4096n, to: 'private', result: 0, outcome: 'converted', ns: 1234 },
  { vcpu: 3, source: 'memory-fault', gpa: 0xffff_ffff_ffff_f000n, size: 2n ** 64n - 1n, to: 'shared', result: -22, outcome: 'rejected', reason: 'the range is not inside one RAM block', ns: 0 },
  { vcpu: 63, source: 'hypercall', gpa: 0n, size: 0n, to: 'shared', result: 11, outcome: 'failed', reason: 'EIO: punch-hole, fallocate', ns: 2 ** 40 },
];

describe('conversion events packed for the main thread', () => {
  it('come back field for field after a transfer through a MessagePort, reasons only where given', () => {
    const packer = new EventPacker(4);
    for (const event of EVENTS) packer.push(event);
    assert.equal(packer.length, 3);
    const packed = packer.take();
    const { port1, port2 } = new MessageChannel();
    port1.postMessage(packed, [packed.buffer]);
    assert.equal(packed.buffer.byteLength, 0, 'the buffer was transferred, not copied');
    const received = receiveMessageOnPort(port2)!.message as PackedEvents;
    port1.close();
    assert.deepStrictEqual(unpackEvents(received), EVENTS);
    assert.ok(!('reason' in unpackEvents(received)[0]!));
  });

  it('starts a fresh buffer after take: a full batch and then the next one', () => {
    const packer = new EventPacker(2);
    packer.push(EVENTS[0]!);
    packer.push(EVENTS[1]!);
    const first = packer.take();
    assert.equal(packer.length, 0);
    packer.push(EVENTS[2]!);
    const second = packer.take();
    assert.notEqual(first.buffer, second.buffer);
    assert.deepStrictEqual(unpackEvents(first), EVENTS.slice(0, 2));
    assert.deepStrictEqual(unpackEvents(second), EVENTS.slice(2));
    assert.deepStrictEqual(unpackEvents(packer.take()), []);
  });
});
