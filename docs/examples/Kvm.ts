// What this host's KVM offers, and a VM of the best type it has for private memory.
import { Kvm, bestPrivateMemoryVmType, probe, vmTypesInMask } from 'guestmem';

const report = probe();                                  // works without /dev/kvm: says why not
if (!report.kvm.ok) throw new Error(`no KVM here: ${report.kvm.why}`);
using kvm = Kvm.open();
console.log(vmTypesInMask(kvm.vmTypesMask));              // e.g. [ 'default', 'sw-protected' ]
const type = bestPrivateMemoryVmType(kvm.vmTypesMask);   // 'snp', 'tdx', 'sw-protected' or null
if (type === null) throw new Error('no VM type with private memory on this host');
using vm = kvm.createVm(type);                           // SNP and TDX are initialized here
console.log(vm.supportsPreFault);
