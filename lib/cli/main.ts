// The guestmem command: dispatch, help, and exit codes (0 success, 1 a failed operation,
// 2 bad usage with a message that says what to fix).

import { benchCommand } from './bench-command';
import { convertCommand } from './convert-command';
import { demoCommand } from './demo-command';
import { guestCommand } from './guest-command';
import { probeCommand } from './probe-command';
import { replayCommand, runCommand, simulateCommand } from './script-commands';
import { UsageError } from './usage-error';
import { vmCommand } from './vm-command';
import { withVmTypeHelp } from './vm-type-option';

const HELP: Record<string, string> = {
  '': `guestmem: guest_memfd, KVM memory attributes and VFIO DMA for confidential-VM work

usage: guestmem <command> [options]   (guestmem <command> --help for each)

commands:
  probe      what this host supports, and for each missing piece why and what to do
  convert    make a VM with one RAM block and convert ranges of it
  simulate   run a conversion script through the tracker only (no kernel)
  run        run a conversion script against a real VM
  replay     replay a QEMU trace of a guest's conversions
  guest      run a guest program whose own hypercalls convert its memory (vCPUs, VMM loop)
  bench      time conversions of 1, 16 and 512 pages on a real kernel
  demo       the whole story with proofs: share, DMA, convert private, DMA blocked
  vm         run a guestmem command inside the harness VM (QEMU, built-in kernel)

examples:
  guestmem probe
  guestmem demo
  guestmem simulate script.txt --json`,
  probe: `usage: guestmem probe [--json] [--guest-size S] [--require LIST]
  Reports /dev/kvm, VM types (and for SEV-SNP and TDX what the host shows: the VM-types bit,
  kvm_amd sev_snp / kvm_intel tdx, /dev/sev), guest_memfd, memory attributes, IOMMU groups, vfio-pci devices,
  VFIO type1 (with its dma_entry_limit) and iommufd; for each missing piece, why and the fix.
  For type1 it says how much of a guest of size S (default 8G) can be shared at once at
  4 KiB granules (one DMA entry each), and what dma_entry_limit all of it would need.
  --require vm-type=snp,vfio,iommufd,…: exit 1 naming each one missing (0 when all are
  present), a gate for a hardware CI job. Items: vm-type=<name|number>, kvm, private-memory-vm,
  sw-protected-vm, snp-vm, tdx-vm, guest-memfd, memory-attributes, pre-fault, iommu, vfio,
  vfio-type1, iommufd, vfio-device.
examples:
  guestmem probe --json | jq .memoryAttributes
  guestmem probe --require vm-type=tdx,vfio,iommufd`,
  convert: `usage: guestmem convert --size S --gpa A --range OFF+LEN --to private|shared [--range ... --to ...]
                        [--vfio BDF] [--backend auto|type1|iommufd] [--json]
  Makes a SW-protected VM with one RAM block of S bytes at guest address A (all private, as
  KVM starts it), optionally attaches the device's VFIO DMA listener, converts each range
  (offsets within the block) in order, and prints each result with its timing.
  Sizes: 4096, 0x1000, 64K, 16M, 2G. One --to applies to every --range, or give one each.
examples:
  guestmem convert --size 64M --gpa 16M --range 1M+64K --to shared
  guestmem convert --size 64M --gpa 16M --vfio 0000:00:01.0 --range 0+2M --to shared --range 0+4K --to private`,
  simulate: `usage: guestmem simulate [FILE|-] [--json] [--svg FILE] [--max-input SIZE]
  Runs a conversion script through the tracker with recording listeners that model VFIO
  (a double map or unmap counts as an error), touching no kernel. Script lines:
    block <bytes> [granule]          one RAM block; granule defaults to 4096
    listen <id> <offset> <size>      register a recording listener on a section
    unlisten <id>
    convert <offset> <size> shared|private
  Blank lines and # comments are ignored. A malformed line exits 2 with its line number;
  an invalid conversion is counted as rejected and the run goes on. The script is read up
  to --max-input bytes (default 64M); a block whose bitmap would pass 256 MiB is refused.
  --json prints {"granule","pages","shared":[[firstPage,count]...],"listeners":{id:{"mapped","errors"}},
  "rejected","ops" (convert lines executed),"elapsedNs" (time inside convert lines only)}.
examples:
  guestmem simulate script.txt --svg map.svg
  printf 'block 1M\\nlisten a 0 1M\\nconvert 0 64K shared\\n' | guestmem simulate - --json`,
  run: `usage: guestmem run SCRIPT [--vfio BDF] [--backend auto|type1|iommufd] [--gpa A] [--json] [--svg FILE] [--max-input SIZE]
  Executes a simulate script against a real SW-protected VM: the block becomes a guest_memfd
  memslot at --gpa (default 16M); 'listen' attaches the VFIO DMA listener of the device named
  by --vfio on its section (a recording listener without --vfio). Exits 1 if a conversion
  fails in the kernel. A progress bar shows on long scripts when stdout is a terminal.
example:
  guestmem run script.txt --vfio 0000:00:01.0 --svg map.svg`,
  replay: `usage: guestmem replay TRACE [--size S --gpa A] [--vfio BDF] [--dry-run] [--json] [--svg FILE] [--max-input SIZE]
  Replays QEMU's kvm_convert_memory events (log trace backend, optionally '<pid>@<s>.<us>:'
  prefixed) by guest address on a real VM (--dry-run: the tracker only), and checks each
  ram_block_attributes_state_change event against the tracker's own view. Other lines are
  skipped. Without --size/--gpa the block is inferred from the addresses (and it says so),
  leaving out conversions past 2^64 (and, on a real VM, past 2^52: no guest has such
  addresses); those are rejected and counted. Addresses and sizes go to 2^64 - 1. A huge
  inferred block that the conversions barely touch is refused: give --gpa/--size.
  Exits 1 on a failed conversion or a mismatch with QEMU's view.
example:
  guestmem replay qemu-trace.log --gpa 0 --size 4G --dry-run`,
  bench: `usage: guestmem bench [--json] [--iterations N] [--pages 1,16,512] [--no-vfio] [--no-far-end] [--no-prefault] [--no-vm]
  Times conversions on a real kernel, split by step (KVM attributes, listeners, discard,
  pre-fault), with the number of native calls per conversion; where KVM has
  KVM_CAP_PRE_FAULT_MEMORY, once without and once with the optional pre-fault. Then one
  page at the far end of an 8 GiB block against one at the far end of a 1 GiB block (same
  VM, alternating), which should cost the same (--no-far-end skips it: creating the blocks
  makes KVM mark 9 GiB private). Runs inside the harness VM when this host lacks
  SW-protected VMs (--no-vm: fail instead).
example:
  guestmem bench --json`,
  guest: `usage: guestmem guest PROGRAM [--vcpus N] [--vfio BDF] [--backend auto|type1|iommufd]
                     [--iterations N] [--seed N] [--pages N] [--timeout S] [--json] [--svg FILE] [--no-vm]
  Runs a guest program (64-bit, assembled from guest/) on vCPUs of a SW-protected VM. Its
  KVM_HC_MAP_GPA_RANGE hypercalls convert its memory through the tracker, KVM's attributes,
  the device's VFIO DMA listener (--vfio) and the punch-hole; the guest is answered 0, or
  -22 (bad request) / -14 (failed and rolled back) and goes on. The host checks the memfd
  and, with --vfio, the device's reach by DMA. Programs:
    secret   a private page hides a secret from the host and the device; a shared one carries messages
    random   --iterations random conversions (--seed), checked against a model after each; --vcpus 2 races them
    loop     --iterations x (private, shared) of one page
    misbehave  --seed 0 spins (stop it with --timeout), 1 triple-faults, 2 uses a stray port, 3 halts, 4 ud2
  Runs inside the harness VM when this host lacks what it needs (--no-vm: fail instead).
  Exits 1 if a check fails or the guest does not exit 0.
examples:
  guestmem guest secret --vfio 0000:00:01.0
  guestmem guest random --vcpus 2 --iterations 50 --seed 7 --svg random.svg`,
  demo: `usage: guestmem demo [--json] [--no-vm]
  A SW-protected VM with one RAM block, a VFIO listener on the edu device (iommufd where
  present), a 64 KiB bounce buffer shared and reached by DMA, 16 KiB of it converted private
  (DMA no longer reaches it) and back (DMA reaches it again), each step timed, and the final
  map. Runs inside the harness VM when this host lacks what it needs. Exits 1 if a proof fails.
example:
  guestmem demo --json`,
  vm: `usage: guestmem vm [--kernel 6.12|7.2] [--memory SIZE] [--edu N] [--kernel-log FILE] [--timeout SECONDS] [--] <command> [args]
  Runs a guestmem command inside the harness VM: QEMU (software emulation) booting a Linux
  6.12 (Debian bookworm's) or 7.2 (Debian unstable's; --kernel or GUESTMEM_KERNEL) kernel
  with KVM (SW-protected VMs), an emulated Intel IOMMU and N edu devices bound to vfio-pci.
  Each kernel is built on first use (about 5 minutes) and cached under ~/.cache/guestmem. Needs Debian's qemu-system-x86, busybox-static and the kernel build
  packages (it names them if missing, exit 2).
examples:
  guestmem vm -- probe
  guestmem vm --kernel 7.2 -- probe
  guestmem vm --edu 2 --kernel-log vm.log -- demo --json`,
};

const COMMANDS: Record<string, (args: string[]) => number | Promise<number>> = {
  probe: probeCommand,
  convert: convertCommand,
  simulate: simulateCommand,
  run: runCommand,
  replay: replayCommand,
  bench: benchCommand,
  guest: guestCommand,
  demo: demoCommand,
  vm: vmCommand,
};

export async function main(argv: string[]): Promise<number> {
  const [command, ...args] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    const topic = args[0] ?? '';
    console.log(Object.hasOwn(HELP, topic) ? HELP[topic] : HELP['']);
    return command === undefined ? 2 : 0;
  }
  // An own property only: 'constructor' or '__proto__' is not a command.
  const run = Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : undefined;
  if (!run) {
    console.error(`guestmem: unknown command '${command}'\n\n${HELP['']}`);
    return 2;
  }
  if (command !== 'vm' && (args.includes('--help') || args.includes('-h'))) {
    console.log(withVmTypeHelp(command, HELP[command]!));
    return 0;
  }
  try {
    return await run(args);
  } catch (error) {
    // Anything may be thrown (a listener's string, null): report it, never crash on it.
    const e = (error instanceof Error ? error : new Error(`non-error thrown: ${String(error)}`)) as Error & { code?: unknown };
    if (error instanceof UsageError || (typeof e.code === 'string' && e.code.startsWith('ERR_PARSE_ARGS'))) {
      console.error(`guestmem ${command}: ${e.message}\n(see guestmem ${command} --help)`);
      return 2;
    }
    console.error(`guestmem ${command}: ${e.message}`);
    if (process.env.GUESTMEM_DEBUG) console.error(e.stack);
    return 1;
  }
}
