// The smallest guest that exits: a default-type VM (no guest_memfd, no attributes: what
// the machines' own /dev/kvm runs on their real cores) with one memslot of shared memory,
// whose vCPUs loop in real mode on `out 0x10, al; jmp back`. Each exit is an OUT on port
// 0x10 and the vCPU re-enters: a bare round trip through userspace, for the exit bench and
// for tests of vCPU threads and lifetimes that need no conversions.

import type { Kvm, Vm } from '../kvm/kvm';
import { SharedMemory } from '../kvm/shared-memory';
import { Vcpu } from './vcpu';

export const EXIT_LOOP_PORT = 0x10;
const CODE_GPA = 0x1000;
const SLOT_SIZE = 0x10000;
/** out 0x10, al; jmp back. */
const CODE = [0xe6, EXIT_LOOP_PORT, 0xeb, 0xfc];

/** The VM, its vCPUs and its memory; close() releases all three. */
export interface ExitLoopGuest {
  vm: Vm;
  vcpus: Vcpu[];
  close(): void;
}

/** A default-type VM whose `count` vCPUs are ready to loop on their OUT. */
export function exitLoopGuest(kvm: Kvm, count: number): ExitLoopGuest {
  const vm = kvm.createVm('default');
  const memory = SharedMemory.create(SLOT_SIZE, 'guestmem-exit-loop');
  try {
    memory.view(CODE_GPA, CODE.length).set(CODE);
    vm.setUserMemoryRegion({ slot: 0, gpa: 0, size: SLOT_SIZE, userspaceAddress: memory.address });
    const vcpus: Vcpu[] = [];
    for (let id = 0; id < count; id++) {
      const vcpu = Vcpu.create(kvm, vm, id);
      const sregs = vcpu.specialRegisters;
      vcpu.specialRegisters = { ...sregs, cs: { ...sregs.cs, base: 0n, selector: 0 } };
      vcpu.registers = { ...vcpu.registers, rip: BigInt(CODE_GPA), rflags: 2n };
      vcpus.push(vcpu);
    }
    return {
      vm,
      vcpus,
      close() {
        vm.close();
        memory.close();
      },
    };
  } catch (error) {
    vm.close();
    memory.close();
    throw error;
  }
}
