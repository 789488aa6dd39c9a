// The counterpart of QEMU's ram_block_attributes_state_change tracepoint, on
// node:diagnostics_channel so tools can subscribe without the library knowing them.

import diagnosticsChannel from 'node:diagnostics_channel';
import type { Bytes } from '../common/byte-range';

export type PageState = 'shared' | 'private';

export interface StateChangeMessage {
  /** The block's name, as given to its tracker. */
  block: string;
  offset: Bytes;
  size: Bytes;
  from: PageState | 'mixture';
  to: PageState;
}

export const STATE_CHANGE_CHANNEL = 'guestmem:state-change';

export const stateChangeChannel = diagnosticsChannel.channel(STATE_CHANGE_CHANNEL);
