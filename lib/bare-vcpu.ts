// A vCPU fd and nothing more (KVM_CREATE_VCPU, never run): what KVM_PRE_FAULT_MEMORY needs
// to be tried and measured before the library has vCPUs of its own. A VMM passes its own
// vCPU's fd instead (RamBlockOptions.prefault).

import { FdOwner } from './fd-owner';
import type { Vm } from './kvm';
import { native } from './native';

export class BareVcpu extends FdOwner {
  private constructor(fd: number) {
    super(fd, 'KVM vCPU');
  }

  static create(vm: Vm, id = 0): BareVcpu {
    return new BareVcpu(native().kvmCreateVcpu(vm.fd, id));
  }
}
