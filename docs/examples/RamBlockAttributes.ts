// The tracker alone: no /dev/kvm, no addon. A 1 MiB block, all private, and a listener that
// maps what is shared as a device's DMA listener would.
import { RamBlockAttributes, RecordingListener } from 'guestmem';

const block = new RamBlockAttributes(1 << 20, { granularity: 4096 });
const device = new RecordingListener('device', block.granules);
await block.register(device, { offset: 0, size: 1 << 20 });   // replays what is shared (nothing yet)

const shared = await block.stateChange(0, 64 << 10, 'shared');       // notifies populate once
await block.stateChange(16 << 10, 4096, 'private');                  // notifies discard once
console.log(shared.changed, block.runs('shared'));                   // 16 [ [ 0, 4 ], [ 5, 11 ] ]
await block.unregister(device);                                      // discards what it holds
