// `guestmem vm`: runs a guestmem command inside the harness VM (a 6.12 or 7.2 kernel with
// KVM, SW-protected VMs, an emulated IOMMU and edu devices bound to vfio-pci), built on
// first use and cached. Also the path `demo` and `bench` take on a host that lacks what they
// need; they boot the kernel GUESTMEM_KERNEL names, as run-in-vm.sh does.

import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { parseCommand, type CommandSpec } from './command-spec';
import { UsageError } from './usage-error';

export const PACKAGE_ROOT = path.resolve(__dirname, '..', '..', '..');
const RUN_IN_VM = path.join(PACKAGE_ROOT, 'scripts', 'vm', 'run-in-vm.sh');
const GUESTMEM = path.join(PACKAGE_ROOT, 'bin', 'guestmem.js');

/** The harness kernels scripts/vm/build-kernel.sh builds. */
export const HARNESS_KERNELS = ['6.12', '7.2'] as const;

export interface VmOptions {
  /** Which harness kernel; default GUESTMEM_KERNEL, else 6.12. */
  kernel?: string;
  memory?: string;
  edu?: string;
  kernelLog?: string;
  timeout?: string;
}

/** Runs `guestmem <args>` in the harness VM, streaming its output; returns its exit status. */
export function runInVm(args: string[], options: VmOptions = {}): number {
  const vmArgs: string[] = [];
  if (options.kernel) {
    if (!(HARNESS_KERNELS as readonly string[]).includes(options.kernel)) throw new UsageError(`--kernel must be one of ${HARNESS_KERNELS.join(', ')}, got '${options.kernel}'`);
    vmArgs.push('--kernel', options.kernel);
  }
  if (options.memory) vmArgs.push('--memory', options.memory);
  if (options.edu) vmArgs.push('--edu', options.edu);
  if (options.kernelLog) vmArgs.push('--kernel-log', path.resolve(options.kernelLog));
  if (options.timeout) vmArgs.push('--timeout', options.timeout);
  const result = spawnSync(RUN_IN_VM, [...vmArgs, '--', process.execPath, GUESTMEM, ...args], { stdio: 'inherit' });
  if (result.error) throw new UsageError(`cannot start ${RUN_IN_VM}: ${result.error.message}`);
  return result.status ?? 1;
}

const VM_OPTIONS = {
  kernel: { type: 'string', value: '6.12|7.2', help: 'the harness kernel to boot (default GUESTMEM_KERNEL, else 6.12)' },
  memory: { type: 'string', value: 'SIZE', help: 'the VM\'s memory, as QEMU\'s -m takes it (2G, 4096M)' },
  edu: { type: 'string', value: 'N', help: 'edu devices bound to vfio-pci, 0..16' },
  'kernel-log': { type: 'string', value: 'FILE', help: 'keep the kernel\'s console and QEMU\'s messages in FILE' },
  timeout: { type: 'string', value: 'S', help: 'end the run (exit 3) after S seconds (default 1200)' },
} as const;

export const VM: CommandSpec<typeof VM_OPTIONS> = {
  name: 'vm',
  summary: 'run a guestmem command inside the harness VM (QEMU, built-in kernel)',
  trailer: '[--] <command> [args]',
  maxPositionals: Infinity,
  options: VM_OPTIONS,
  description: `Runs a guestmem command inside the harness VM: QEMU (software emulation) booting a Linux
6.12 (Debian bookworm's) or 7.2 (Debian unstable's) kernel with KVM (SW-protected VMs), an
emulated Intel IOMMU and edu devices bound to vfio-pci. Each kernel is built on first use
(about 5 minutes on 2 cores, with progress on stderr) and cached under ~/.cache/guestmem.
Needs Debian's qemu-system-x86, busybox-static and the kernel build packages (it names
them if missing, exit 2). The options before -- are the VM's; the rest is the command.`,
  examples: ['guestmem vm -- probe', 'guestmem vm --kernel 7.2 -- probe', 'guestmem vm --edu 2 --kernel-log vm.log -- demo --json'],
};

export function vmCommand(args: string[]): number {
  const split = args.indexOf('--');
  const { values, positionals } = parseCommand(VM, split >= 0 ? args.slice(0, split) : args);
  const command = split >= 0 ? args.slice(split + 1) : positionals;
  if (command.length === 0) throw new UsageError('give the guestmem command to run in the VM, e.g. guestmem vm -- demo');
  // Checked here, before run-in-vm.sh waits for the harness lock and boots a VM that QEMU would refuse.
  if (values.memory !== undefined && !/^[1-9]\d*[kmgt]?$/i.test(values.memory)) {
    throw new UsageError(`--memory takes a size as QEMU's -m does (2G, 4096M), got '${values.memory}'`);
  }
  if (values.edu !== undefined && !/^(?:[0-9]|1[0-6])$/.test(values.edu)) throw new UsageError(`--edu takes a count of edu devices, 0 to 16, got '${values.edu}'`);
  return runInVm(command, { kernel: values.kernel, memory: values.memory, edu: values.edu, kernelLog: values['kernel-log'], timeout: values.timeout });
}
