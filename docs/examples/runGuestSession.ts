// A guest in charge: two vCPUs run the `random` program, which converts pages with the
// KVM_HC_MAP_GPA_RANGE hypercall; the VMM loop converts each range and the host checks the
// tracker against its own model after every step. Needs /dev/kvm with SW-protected VMs.
import { GuestMemory, Kvm, runGuestSession } from 'guestmem';

using kvm = Kvm.open();
await using memory = new GuestMemory(kvm.createVm('sw-protected'));
memory.addBlock({ gpa: 0x1000000, size: 16 << 20 });
const report = await runGuestSession({ kvm, memory, program: 'random', vcpus: 2, iterations: 50,
                                       dataGpa: 0x1100000n, dataPages: 64 });
console.log(report.ok, report.run.conversions);          // true { converted: 100, rejected: 0, failed: 0 }
