// A guest on real KVM: vCPUs in 64-bit mode running a guest program loaded into shared
// guest memory, with KVM routing KVM_HC_MAP_GPA_RANGE to us, and the VMM loop converting
// what the guest asks through GuestMemory (tracker, KVM attributes, VFIO listener,
// punch-hole). On an SNP or TDX VM the program goes into private memory through the VM's
// launch instead (launch-boot.ts), which ends before the first KVM_RUN.

import { GuestmemError, outOfRange } from '../common/errors';
import { checkGuestOptions } from './guest-options';
import type { GuestMemory } from '../memory/guest-memory';
import type { Kvm } from '../kvm/kvm';
import type { RamBlock } from '../memory/ram-block';
import { encodeBootInfo, type BootParams } from './boot-info';
import { guestLayout, STACK_SIZE, type GuestLayout } from './guest-image';
import type { PortHandler } from './guest-ports';
import { identityMap, longModeRegisters } from './long-mode';
import { KVM_CAP_EXIT_HYPERCALL, KVM_HC_MAP_GPA_RANGE } from './map-gpa-range';
import { writeShared } from './shared-bytes';
import { measureIntoPrivate } from './launch-boot';
import { MeasuredPages } from './measured-pages';
import { snpEncryptionBit } from './snp-encryption-bit';
import { TDX_RESET_PAGE_GPA, TDX_RESET_PAGE_SIZE, tdxResetPage } from './tdx-reset-page';
import { launchOrderError } from '../kvm/vm-launch';
import { SnpLaunch } from '../kvm/snp-launch';
import { TdxLaunch } from '../kvm/tdx-launch';
import { supportedCpuid, Vcpu, type Registers } from './vcpu';
import { VmmLoop, type ConversionEvent, type LoopMemory, type MmioHandler, type VmmReport } from './vmm-loop';
import { VcpuThreads, type BlockSharing } from './vcpu-threads';
import type { BlockDescriptor } from '../memory/block-sharing';
import type { PortModule } from './vcpu-worker-protocol';

/** How a {@link GuestVm} is made: the program, its vCPUs, port and MMIO handlers, and observers. */
export interface GuestVmOptions {
  kvm: Kvm;
  memory: GuestMemory;
  /** The program's flat binary (guestProgram(name)). */
  image: Uint8Array;
  boot: BootParams;
  /** Where the boot region starts (default: the first block's start). */
  bootGpa?: bigint;
  vcpus?: number;
  ports?: Map<number, PortHandler>;
  mmio?: MmioHandler;
  /** Told of each conversion the guest asked for, once it ended. */
  onConversion?(event: ConversionEvent): void;
  /**
   * Each vCPU on a thread of its own that handles its exits (vcpu-threads.ts): no trip
   * through the event loop per exit. `ports` then run on the main thread, each exit to one
   * a call there and back; give `portModules` for handlers that run on the vCPU's thread.
   */
  threads?: boolean;
  /** With `threads`: port handlers loaded on each vCPU's thread. */
  portModules?: PortModule[];
  /** With `threads`: what those handlers post (context.post). */
  onMessage?(message: unknown, vcpu: number): void;
  /** SNP: the C-bit position for the page tables (default: KVM's CPUID 0x8000001f). */
  snpEncryptionBit?: number;
}

const HYPERCALL_BIT = 1n << KVM_HC_MAP_GPA_RANGE;

/** KVM keeps a vCPU until its VM goes, closed fd or not: each guest takes fresh ids. */
const nextVcpuIds = new WeakMap<object, number>();

/**
 * GuestMemory as the VMM loop sees it; with `measured`, a memory fault may not turn a measured
 * page shared, and a conversion to shared the guest asked for releases its pages.
 */
export function loopMemory(memory: GuestMemory, measured?: MeasuredPages): LoopMemory {
  return {
    covers: (gpa, size) => memory.blocks.some((block) => block.contains(gpa, size)),
    // Synchronous while the block's listeners are (the VFIO listener is): the exit is
    // answered and the vCPU re-enters with no promise in between.
    convert: (gpa, size, to) => {
      const block = memory.blockFor(gpa, size);
      const result = block.canConvertSync ? block.convertSync(gpa, size, to) : block.convert(gpa, size, to);
      // Only a request reaches here for measured pages: faultRefusal stops the faults first.
      if (!measured || to !== 'shared') return result;
      const release = <T>(done: T): T => {
        measured.releasedByGuest(BigInt(gpa), BigInt(size));
        return done;
      };
      return result instanceof Promise ? result.then(release) : release(result);
    },
    faultRefusal: measured ? (gpa, size, to) => measured.faultRefusal(gpa, size, to) : undefined,
  };
}

/**
 * GuestMemory's blocks for vCPU threads: each block that can be converted off the main thread
 * (every listener can run on any thread), and the recovery of every block after a thread died.
 */
export function blockSharing(memory: GuestMemory): BlockSharing {
  return {
    share: () => {
      const descriptors: BlockDescriptor[] = [];
      for (const block of memory.blocks) {
        try {
          descriptors.push(block.share());
        } catch (error) {
          // A listener that answers only on the main thread: its block converts there.
          if ((error as { code?: string }).code !== 'ERR_GUESTMEM_ASYNC_LISTENER' && (error as { code?: string }).code !== 'ERR_GUESTMEM_UNSUPPORTED') throw error;
        }
      }
      return descriptors;
    },
    recoverFrom: (threadId) => {
      for (const block of memory.blocks) block.recoverFrom(threadId);
    },
  };
}

/**
 * A VM's vCPUs set up in long mode over its RAM blocks, running a guest image through the VMM
 * loop.
 */
export class GuestVm implements Disposable {
  readonly vcpus: Vcpu[] = [];
  readonly layout: GuestLayout;
  readonly bootBlock: RamBlock;
  /** What the launch measured (SNP, TDX): a memory fault may not turn it shared. */
  readonly measured = new MeasuredPages();
  private loop: VmmLoop | VcpuThreads | null = null;

  private constructor(private readonly options: GuestVmOptions, layout: GuestLayout, bootBlock: RamBlock) {
    this.layout = layout;
    this.bootBlock = bootBlock;
  }

  /**
   * Shares the boot region, writes the boot info, page tables and program into it, enables
   * the MAP_GPA_RANGE exit and creates the vCPUs in long mode at the program's entry.
   */
  static async create(options: GuestVmOptions): Promise<GuestVm> {
    checkGuestOptions(options, 'GuestVm options');
    const { kvm, memory } = options;
    const count = options.vcpus ?? 1;
    if (!Number.isInteger(count) || count < 1 || count > 64) throw outOfRange(`vcpus must be 1..64, got ${count}`);
    if (memory.blocks.length === 0) throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', 'the guest memory has no RAM block to load the program into');
    const launch = memory.vm.launch;
    if (launch?.finished) throw launchOrderError(`this ${launch.kind} VM's launch has ended: a confidential VM runs the one guest loaded before its launch ended`);
    const supported = BigInt(memory.vm.checkExtension(KVM_CAP_EXIT_HYPERCALL));
    if ((supported & HYPERCALL_BIT) === 0n) {
      throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', `KVM_CAP_EXIT_HYPERCALL does not offer KVM_HC_MAP_GPA_RANGE on this host (0x${supported.toString(16)}): guest-driven conversions need Linux 6.8 or later`);
    }
    memory.vm.enableCap(KVM_CAP_EXIT_HYPERCALL, HYPERCALL_BIT);
    // A TD starts at the reset vector, in the page below 4 GiB: a block must hold it, and
    // the identity map must reach it (the trampoline turns paging on from there).
    if (launch instanceof TdxLaunch) resetBlock(memory);

    const mapEnd = memory.blocks.reduce((end, block) => (BigInt(block.gpa + block.size) > end ? BigInt(block.gpa + block.size) : end), 0n);
    const bootGpa = options.bootGpa ?? BigInt(memory.blocks[0]!.gpa);
    const layout = guestLayout(bootGpa, options.image.length, count, mapEnd);
    const regionSize = layout.end - layout.bootInfo;
    const block = memory.blocks.find((b) => b.contains(Number(bootGpa), Number(regionSize)));
    if (!block) throw outOfRange(`the boot region [0x${bootGpa.toString(16)}, +0x${regionSize.toString(16)}) is not inside one RAM block`);

    // SNP: the tables mark everything private (the C-bit), as the launch measures it. CR3
    // stays untagged, as KVM's selftests leave it: KVM_SET_SREGS refuses a CR3 above the
    // guest's MAXPHYADDR, which on an SEV host lies below the C-bit.
    const encryptionBit = launch instanceof SnpLaunch ? (options.snpEncryptionBit ?? snpEncryptionBit(supportedCpuid(kvm))) : undefined;
    const parts = [
      [layout.bootInfo, encodeBootInfo(options.boot)],
      [layout.pageTables, identityMap(mapEnd, layout.pageTables, encryptionBit).bytes],
      [layout.image, options.image],
    ] as const;
    const reset = launch instanceof TdxLaunch
      ? tdxResetPage({ pageTables: layout.pageTables, entry: layout.image, stacks: layout.stacks, stackSize: STACK_SIZE, vcpus: count, bootInfo: layout.bootInfo })
      : null;
    if (!launch) {
      await memory.convert(Number(bootGpa), Number(regionSize), 'shared');
      for (const [gpa, bytes] of parts) writeShared(block, gpa, bytes);
    } else if (launch instanceof SnpLaunch) {
      // SNP: the pages are measured before the vCPUs are made (the documented order).
      await measureIntoPrivate(launch, memory, bootGpa, regionSize, parts);
    }

    const guest = new GuestVm(options, layout, block);
    if (launch) guest.measured.add(bootGpa, regionSize);
    if (reset) guest.measured.add(TDX_RESET_PAGE_GPA, BigInt(TDX_RESET_PAGE_SIZE));
    try {
      const cpuid = supportedCpuid(kvm);
      const firstId = nextVcpuIds.get(memory.vm) ?? 0;
      nextVcpuIds.set(memory.vm, firstId + count);
      for (let id = 0; id < count; id++) {
        const vcpu = Vcpu.create(kvm, memory.vm, firstId + id);
        guest.vcpus.push(vcpu);
        if (launch instanceof TdxLaunch) {
          // A TD's registers are the TDX module's (it starts at the reset vector); the boot
          // info's address reaches the guest in RCX.
          launch.initVcpu(vcpu.id, cpuid, layout.bootInfo);
          continue;
        }
        vcpu.setCpuid(cpuid);
        vcpu.specialRegisters = longModeRegisters(vcpu.specialRegisters, layout.pageTables);
        vcpu.registers = entryRegisters(layout, id, count);
        if (launch instanceof SnpLaunch) launch.vcpuReady(vcpu.id);
      }
      // TDX measures through an initialized vCPU; either way the launch ends before the
      // first KVM_RUN, and nothing is measured after it.
      if (launch instanceof TdxLaunch) {
        await measureIntoPrivate(launch, memory, bootGpa, regionSize, parts);
        await measureIntoPrivate(launch, memory, TDX_RESET_PAGE_GPA, BigInt(TDX_RESET_PAGE_SIZE), [[TDX_RESET_PAGE_GPA, reset!]]);
      }
      launch?.finish();
    } catch (error) {
      guest.close();
      throw error;
    }
    return guest;
  }

  /**
   * Runs every vCPU until each exits (the exit port), halts, or stop() is called. A TD's vCPU
   * never halts to userspace: its split irqchip puts the LAPIC in the kernel, so KVM keeps a
   * halted TD vCPU inside KVM_RUN (waiting for an interrupt); a TD ends through the exit
   * port, a fatal-error report or stop().
   */
  run(): Promise<VmmReport> {
    if (this.loop) throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', 'this guest has run already: create another');
    const { memory, ports, mmio, onConversion } = this.options;
    const vmType = memory.vm.type;
    if (this.options.threads) {
      const blocks = memory.blocks.map(({ gpa, size }) => ({ gpa, size }));
      const threads = new VcpuThreads(this.vcpus, loopMemory(memory, this.measured), {
        ports, mmio, onConversion, blocks, vmType, portModules: this.options.portModules, onMessage: this.options.onMessage,
        // A launch's measured pages are released on the main thread as the guest shares
        // them: a confidential VM's conversions stay there.
        sharing: this.measured.spans.length === 0 ? blockSharing(memory) : undefined,
      });
      this.loop = threads;
      return threads.run();
    }
    const loop = new VmmLoop(this.vcpus, loopMemory(memory, this.measured), { ports, mmio, onConversion, vmType });
    this.loop = loop;
    return loop.run();
  }

  /** Stops every vCPU; the run resolves with each one stopped. */
  stop(): void {
    this.loop?.stop();
    for (const vcpu of this.vcpus) vcpu.stop();
  }

  /** Closes the vCPUs (their threads stop first); the memory is the caller's. */
  close(): void {
    for (const vcpu of this.vcpus.splice(0)) vcpu.close();
  }

  /** Closes its vCPUs: `using` calls this at the end of its scope. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** The block that holds a TD's reset page: the caller's, or a one-page block added for it. */
function resetBlock(memory: GuestMemory): RamBlock {
  const gpa = Number(TDX_RESET_PAGE_GPA);
  return memory.blocks.find((b) => b.contains(gpa, TDX_RESET_PAGE_SIZE)) ?? memory.addBlock({ gpa, size: TDX_RESET_PAGE_SIZE, name: 'tdx-reset' });
}

function entryRegisters(layout: GuestLayout, id: number, count: number): Registers {
  const zero = 0n;
  return {
    rax: zero, rbx: zero, rcx: zero, rdx: BigInt(count), rsi: BigInt(id), rdi: layout.bootInfo,
    rsp: layout.stacks + BigInt((id + 1) * STACK_SIZE), rbp: zero,
    r8: zero, r9: zero, r10: zero, r11: zero, r12: zero, r13: zero, r14: zero, r15: zero,
    rip: layout.image, rflags: 2n,
  };
}
