// The host's half of a guest program: the boot parameters it gives the guest, the checks
// it makes at the guest's sync points and at the end, and what it learns from each
// conversion. lib/vmm/programs/ holds one per guest program.

import type { DmaProbe } from './dma-probe';
import type { RamBlock } from '../memory/ram-block';
import type { VfioDmaListener } from '../vfio/vfio-dma-listener';
import type { BootParams } from './boot-info';
import type { ConversionEvent } from './vmm-loop';
import type { SevTermination } from './system-event';
import type { PortHandler } from './guest-ports';

export interface HostCheck {
  name: string;
  ok: boolean;
  detail: string;
}

export interface ProgramContext {
  /** The block holding the data area. */
  readonly block: RamBlock;
  readonly dataGpa: bigint;
  readonly dataPages: number;
  readonly vcpus: number;
  readonly seed: bigint;
  readonly iterations: number;
  /** Present when a device is assigned: its DMA reach can be sampled. */
  readonly probe?: DmaProbe;
  readonly listener?: VfioDmaListener;
  /** Pages of the block that are shared outside the data area (the boot region). */
  readonly sharedOutsideData: number;
  check(name: string, ok: boolean, detail: string): void;
}

export interface ProgramHost {
  readonly description: string;
  /** The one VM type the program runs on (its guest speaks that type's protocol); any when absent. */
  readonly vmType?: 'snp' | 'tdx';
  /**
   * A program that ends with an SEV termination request: null when `sev` is its normal end,
   * else the problem. Without it every termination is a problem.
   */
  termination?(sev: SevTermination | undefined): string | null;
  boot(context: ProgramContext): BootParams;
  /** Ports of its own besides the protocol's (plug's PORT_PLUG), on the main thread. */
  ports?(context: ProgramContext): Map<number, PortHandler>;
  /** Before the guest runs (after its boot region is shared). */
  prepare?(context: ProgramContext): void;
  onSync?(step: number, vcpu: number, context: ProgramContext): Promise<void>;
  onConversion?(event: ConversionEvent, context: ProgramContext): void;
  finish?(context: ProgramContext): Promise<void>;
}
