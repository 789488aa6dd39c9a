// The harness VM itself: KVM with SW-protected VMs, guest_memfd and the PRIVATE attribute,
// VFIO with the edu device in its own group, and iommufd.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { KVM_CAP_GUEST_MEMFD, KVM_CAP_MEMORY_ATTRIBUTES, KVM_MEMORY_ATTRIBUTE_PRIVATE } from '../../lib/kvm/kvm-constants';
import { Kvm } from '../../lib/kvm/kvm';
import { EDU_DEVICE, EDU_VENDOR } from '../../lib/vfio/edu-device';
import { pciDevices } from '../../lib/vfio/vfio-sysfs';
import { requires } from '../support/requires';

describe('kernel smoke: what the suites need is there', () => {
  before(requires('kvm'));

  it('opens /dev/kvm and creates a SW-protected VM with guest_memfd and the PRIVATE attribute', function () {
    requires('sw-protected-vm').call(this);
    using kvm = Kvm.open();
    assert.equal(kvm.apiVersion, 12);
    assert.ok(kvm.supportedVmTypes().includes('sw-protected'));
    using vm = kvm.createVm('sw-protected');
    assert.equal(vm.checkExtension(KVM_CAP_GUEST_MEMFD), 1);
    assert.equal(BigInt(vm.checkExtension(KVM_CAP_MEMORY_ATTRIBUTES)) & KVM_MEMORY_ATTRIBUTE_PRIVATE, KVM_MEMORY_ATTRIBUTE_PRIVATE);
  });

  it('has /dev/vfio/vfio, the edu device bound to vfio-pci in its own group, and /dev/iommu', function () {
    requires('vfio-device').call(this);
    assert.ok(fs.statSync('/dev/vfio/vfio').isCharacterDevice());
    const edu = pciDevices().filter((d) => d.vendor === EDU_VENDOR && d.device === EDU_DEVICE);
    assert.ok(edu.length >= 1, 'an edu device is present');
    assert.equal(edu[0]!.driver, 'vfio-pci');
    assert.ok(edu[0]!.iommuGroup !== null);
    assert.ok(fs.statSync(`/dev/vfio/${edu[0]!.iommuGroup}`).isCharacterDevice());
    assert.ok(fs.statSync('/dev/iommu').isCharacterDevice());
    assert.ok(edu[0]!.cdev && fs.statSync(edu[0]!.cdev).isCharacterDevice());
  });
});
