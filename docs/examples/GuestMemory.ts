// A VM's guest memory with a device attached: every conversion sets KVM's attributes, maps
// or unmaps the device's DMA, and frees the backing the page left, undoing it all on failure.
// Needs /dev/kvm with SW-protected VMs and a device bound to vfio-pci (the harness VM has both).
import { AssignedDevice, GuestMemory, Kvm, VfioDmaListener } from 'guestmem';

using kvm = Kvm.open();
using device = AssignedDevice.open('0000:00:01.0');                 // iommufd where it can, else type1
// Declared last, disposed first: its listeners unregister (DMA unmapped) before the device goes.
await using memory = new GuestMemory(kvm.createVm('sw-protected'));
const block = memory.addBlock({ gpa: 0x1000000, size: 64 << 20 }); // memslot + guest_memfd, all private

const listener = new VfioDmaListener(device.dma, { sharedAddress: block.shared.address, gpa: BigInt(block.gpa) });
await block.register(listener);

await memory.convert(0x1100000, 64 << 10, 'shared');   // attributes, DMA map, guest_memfd punch-hole
await memory.convert(0x1100000, 16 << 10, 'private');  // DMA unmap, attributes, shared memfd punch-hole
console.log(listener.mappings);                        // 12: one per shared 4 KiB granule
