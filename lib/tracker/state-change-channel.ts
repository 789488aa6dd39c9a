// The counterpart of QEMU's ram_block_attributes_state_change tracepoint, on
// node:diagnostics_channel so tools can subscribe without the library knowing them.

// A named import, not a default one: the published .d.ts must compile without esModuleInterop.
import { channel, type Channel } from 'node:diagnostics_channel';
import type { Bytes } from '../common/byte-range';
import type { PageState } from './page-state';

// PageState lives in page-state.ts; re-exported here for the modules that import it from here.
export type { PageState } from './page-state';

/** One state change as published on {@link STATE_CHANGE_CHANNEL}. */
export interface StateChangeMessage {
  /** The block's name, as given to its tracker. */
  block: string;
  offset: Bytes;
  size: Bytes;
  from: PageState | 'mixture';
  to: PageState;
}

/**
 * The node:diagnostics_channel name on which every state change is published (QEMU's
 * ram_block_attributes_state_change).
 */
export const STATE_CHANGE_CHANNEL = 'guestmem:state-change';

export const stateChangeChannel: Channel = channel(STATE_CHANGE_CHANNEL);
