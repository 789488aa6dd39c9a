// A PCI device bound to vfio-pci, through iommufd where it has a cdev, else type1; its
// `dma` is what a VfioDmaListener maps through.
import { AssignedDevice, vfioPciDevices } from 'guestmem';

const [first] = vfioPciDevices();                        // the devices bound to vfio-pci here
if (first === undefined) throw new Error('no device is bound to vfio-pci');
using device = AssignedDevice.open(first.bdf, { backend: 'auto' });
console.log(device.bdf, device.backend, device.dma.mappingsAvailable());
