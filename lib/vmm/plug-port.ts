// The port through which a guest program asks the host to plug or unplug its data area
// (guest/common.inc PORT_PLUG), as virtio-mem's guest driver asks through its queue: an OUT
// of 0 (unplug) or 1 (plug), then an IN that reads the answer. As with MAP_GPA_RANGE, the
// guest is answered rather than stopped: 0, -KVM_EINVAL for a request refused before any
// step (nothing changed), -KVM_EFAULT for one that failed and was rolled back. The handler
// runs on the main thread (a vCPU thread's exit to it is a call there); the plug state is
// shared memory, so the vCPU threads' conversions follow it.

import type { Bytes } from '../common/byte-range';
import { isRejection, outOfRange } from '../common/errors';
import type { RamBlock } from '../memory/ram-block';
import type { PortHandler } from './guest-ports';
import { KVM_EFAULT, KVM_EINVAL } from './map-gpa-range';

export const PORT_PLUG = 0xee;

/** The handler of PORT_PLUG for [gpa, gpa + size) of `block`. */
export function plugPort(block: RamBlock, gpa: Bytes, size: Bytes): PortHandler {
  let answer = 0;
  return async (exit) => {
    if (exit.direction === 'in') {
      const bytes = Buffer.alloc(exit.size * exit.count);
      bytes.writeInt32LE(answer, 0);
      return bytes;
    }
    if (!exit.data || exit.data.length < 4) throw new Error(`port 0x${PORT_PLUG.toString(16)} takes a 32-bit OUT`);
    const request = exit.data.readUInt32LE(0);
    try {
      if (request === 1) await block.plug(gpa, size);
      else if (request === 0) await block.unplug(gpa, size);
      else throw outOfRange(`plug request ${request}: 0 unplugs, 1 plugs`);
      answer = 0;
    } catch (error) {
      const refused = isRejection(error) || (error as { code?: unknown }).code === 'ERR_GUESTMEM_UNSUPPORTED';
      answer = refused ? -KVM_EINVAL : -KVM_EFAULT;
    }
    return undefined;
  };
}
