// The two places a script or trace can run: the tracker alone (a dry run that touches no
// kernel) and a real SW-protected VM with one RAM block, optionally with a VFIO device
// whose DMA listener maps what turns shared.

import { AssignedDevice } from '../vfio/assigned-device';
import type { Bytes } from '../common/byte-range';
import type { DmaBackend } from '../vfio/dma-mapper';
import { BlockLock, LOCK_BYTES } from '../memory/block-lock';
import { GuestMemory } from '../memory/guest-memory';
import { Kvm } from '../kvm/kvm';
import type { RamBlock } from '../memory/ram-block';
import { RamBlockAttributes, type StateChangeResult } from '../tracker/ram-block-attributes';
import { PlugSource, oppositePlug, type PlugState } from '../tracker/plug-source';
import type { PageState } from '../tracker/page-state';
import { VfioDmaListener } from '../vfio/vfio-dma-listener';
import { Vcpu } from '../vmm/vcpu';
import type { ScriptHost } from './script-runner';
import { addBytes } from './sizes';
import { UsageError } from './usage-error';
import { resolveVmType } from './vm-type-option';
import { vmTypeFix, vmTypeName, type VmTypeChoice } from '../kvm/vm-types';
import { GuestmemError, messageOf } from '../common/errors';
import { normalizeBdf } from '../vfio/vfio-sysfs';
import type { BlockSetUpProgress } from '../memory/block-set-up';
import { progressBar } from './output';

/** A block at least this large shows a progress bar while it is marked private. */
const LONG_MARKING_BYTES = 8 * 2 ** 30;

export class TrackerHost implements ScriptHost {
  private attributes: RamBlockAttributes | null = null;
  /**
   * A block's lock, taken around each synchronous conversion as every thread's conversion
   * takes it (BlockConversion.convertSync): a dry run costs what the tracker costs on the
   * shared core, lock included.
   */
  private readonly lock = new BlockLock(new SharedArrayBuffer(LOCK_BYTES), 0, 'simulated');
  private plugs: PlugSource | null = null;

  openBlock(size: Bytes, granule: number, plugBlock?: number): RamBlockAttributes {
    const attributes = new RamBlockAttributes(size, { granularity: granule, name: 'simulated' });
    this.plugs = new PlugSource(attributes.granules, attributes.granularity, plugBlock ?? attributes.granularity);
    attributes.addSource(this.plugs);
    this.attributes = attributes;
    return attributes;
  }

  plugSource(): PlugSource {
    return this.plugs!;
  }

  /** The tracker's side of a plug (no backings to punch): the listeners populate or discard. */
  plug(offset: Bytes, size: Bytes, to: PlugState): Promise<unknown> {
    const plugs = this.plugs!;
    try {
      const range = plugs.range(offset, size, to === 'plugged' ? 'plug' : 'unplug');
      return this.attributes!.sourceChange(plugs.change(plugs.runs(oppositePlug(to), range.first, range.count), to));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  makeListener(): null {
    return null;
  }

  convert(offset: Bytes, size: Bytes, to: PageState): Promise<StateChangeResult> {
    return this.attributes!.stateChange(offset, size, to);
  }

  canConvertSync(): boolean {
    return this.attributes!.canChangeSync;
  }

  convertSync(offset: Bytes, size: Bytes, to: PageState): StateChangeResult {
    this.lock.acquireForConversion();
    try {
      return this.attributes!.stateChangeSync(offset, size, to);
    } finally {
      this.lock.release();
    }
  }

  async shutdown(): Promise<void> {}
}

export interface VmHostOptions {
  gpa: Bytes;
  vfio?: string;
  backend?: DmaBackend | 'auto';
  /** Pre-fault each conversion's range on a vCPU of the VM (never run; where KVM has it). */
  prefault?: boolean;
  /** --vm-type; undefined: the best type this host has for private memory. */
  vmType?: VmTypeChoice;
  /** The command as typed, for the fix a host without the VM type is given. */
  commandLine?: string[];
}

/** The --backend option: auto (iommufd where the device has a cdev), type1 or iommufd. */
export function backendOption(value: string | undefined): DmaBackend | 'auto' {
  const backend = value ?? 'auto';
  if (backend !== 'auto' && backend !== 'type1' && backend !== 'iommufd') throw new UsageError(`--backend must be auto, type1 or iommufd, got '${backend}'`);
  return backend;
}

/** --vfio: a PCI address (0000:00:01.0, or 00:01.0), checked before anything touches the kernel. */
export function vfioOption(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  try {
    return normalizeBdf(value);
  } catch (error) {
    throw new UsageError(`--vfio: ${messageOf(error)}`);
  }
}

/** Default guest address of the block: low enough that edu (28-bit DMA) reaches all of it. */
export const DEFAULT_GPA = 16 * 1024 * 1024;

/**
 * Opening KVM fails on hosts without it, with an errno that alone says little: keep the
 * kernel's error (code, errno, syscall) and say what to do.
 */
function withKvmHint<T>(make: () => T, options: VmHostOptions): T {
  try {
    return make();
  } catch (error) {
    const e = error as NodeJS.ErrnoException;
    if (typeof e?.syscall !== 'string') throw error;
    const again = options.commandLine ? options.commandLine.join(' ') : '<command>';
    // The harness VM has SW-protected VMs only: for another type, the fix is the host's.
    const fix = options.vmType === undefined || vmTypeName(options.vmType) === 'sw-protected'
      ? `run the command inside the harness VM: guestmem vm -- ${again}`
      : vmTypeFix(options.vmType);
    const message = `${e.message}: this host has no usable /dev/kvm ('guestmem probe' says why); fix: ${fix}`;
    // No /dev/kvm at all is a host that lacks something, as --no-vm's refusal and a missing VM
    // type say (ERR_GUESTMEM_UNSUPPORTED); a permission or other error keeps the kernel's code.
    const lacking = e.code === 'ENOENT' || e.code === 'ENODEV' || e.code === 'ENXIO';
    if (lacking) throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', message, { cause: error, errno: e.errno, syscall: e.syscall });
    throw Object.assign(new Error(message, { cause: error }), { code: e.code, errno: e.errno, syscall: e.syscall });
  }
}

export class VmHost implements ScriptHost {
  readonly kvm: Kvm;
  readonly memory: GuestMemory;
  readonly assigned: AssignedDevice | null;
  /** The VM type this host made: --vm-type, or the best for private memory. */
  readonly vmType: string;
  private readonly vcpu: Vcpu | null = null;
  block: RamBlock | null = null;

  constructor(private readonly options: VmHostOptions) {
    this.kvm = withKvmHint(() => Kvm.open(), options);
    try {
      const type = resolveVmType(this.kvm, options.vmType, options.commandLine);
      this.vmType = vmTypeName(type);
      const vm = this.kvm.createVm(type);
      const vcpu = options.prefault ? Vcpu.create(this.kvm, vm, 0) : null;
      this.vcpu = vcpu;
      this.memory = new GuestMemory(vm, vcpu ? { prefault: () => vcpu.fd } : {});
      this.assigned = options.vfio ? AssignedDevice.open(options.vfio, { backend: options.backend ?? 'auto' }) : null;
    } catch (error) {
      this.vcpu?.close();
      this.kvm.close();
      throw error;
    }
  }

  openBlock(size: Bytes, granule: number, plugBlock?: number): RamBlockAttributes {
    // Marking a large block private takes a while (a minute for 256 GiB under emulation): a
    // terminal sees how far it got.
    const bar = progressBar('marking guest RAM private', Number(size), LONG_MARKING_BYTES);
    const onProgress = bar && (({ done }: BlockSetUpProgress) => bar(done));
    this.block = this.memory.addBlock({ gpa: this.options.gpa, size, granularity: granule, name: 'guest-ram', plugBlockSize: plugBlock, onProgress });
    // run, replay, convert and bench report the time of each step.
    this.block.stats.timing = true;
    return this.block.attributes;
  }

  makeListener(id: string): VfioDmaListener | null {
    if (!this.assigned) return null;
    return new VfioDmaListener(this.assigned.dma, { sharedAddress: this.block!.shared.address, gpa: BigInt(this.block!.gpa), name: id });
  }

  convert(offset: Bytes, size: Bytes, to: PageState): Promise<StateChangeResult> {
    return this.block!.convert(addBytes(this.block!.gpa, offset), size, to);
  }

  plugSource(): PlugSource {
    return this.block!.plugSource;
  }

  plug(offset: Bytes, size: Bytes, to: PlugState): Promise<unknown> {
    const gpa = addBytes(this.block!.gpa, offset);
    return to === 'plugged' ? this.block!.plug(gpa, size) : this.block!.unplug(gpa, size);
  }

  canConvertSync(): boolean {
    return this.block!.canConvertSync;
  }

  convertSync(offset: Bytes, size: Bytes, to: PageState): StateChangeResult {
    return this.block!.convertSync(addBytes(this.block!.gpa, offset), size, to);
  }

  /** Unregisters listeners (unmapping what they hold) before the device and the VM go. */
  async shutdown(): Promise<void> {
    try {
      await this.memory.shutdown();
    } finally {
      this.assigned?.close();
      this.vcpu?.close();
      this.kvm.close();
    }
  }
}
