// guestmem's public API.

export { GranuleRange, bytesOf, type Bytes } from './common/byte-range';
export { GuestmemError, type GuestmemErrorCode } from './common/errors';
export { PageBitmap, type Run } from './tracker/page-bitmap';
export { RamBlockAttributes, type SectionInput, type StateChangeResult } from './tracker/ram-block-attributes';
export type { RamDiscardListener } from './tracker/ram-discard-listener';
export { RecordingListener } from './tracker/recording-listener';
export type { PageState } from './tracker/page-state';
export { STATE_CHANGE_CHANNEL, type StateChangeMessage } from './tracker/state-change-channel';
export { Kvm, Vm, GuestMemfd, type MemoryRegion, type GuestMemfdSource } from './kvm/kvm';
export type { MemoryVm } from './kvm/memory-vm';
export { DelegatedVm, type VmDelegate } from './kvm/delegated-vm';
export { bestPrivateMemoryVmType, vmTypesInMask, PRIVATE_MEMORY_VM_TYPES, type VmTypeChoice } from './kvm/vm-types';
export { initializeVm, type VmInitialisation } from './kvm/vm-init';
export { ConfidentialLaunch, nativeLaunchCalls, SNP_PAGE_TYPES, type LaunchCalls, type LaunchRegion, type PrivateMemoryCheck, type SnpPageType } from './kvm/vm-launch';
export { SnpLaunch, SNP_DEFAULT_POLICY } from './kvm/snp-launch';
export { TdxLaunch } from './kvm/tdx-launch';
export * from './kvm/kvm-constants';
export { SharedMemory, type SharedMemorySource } from './kvm/shared-memory';
export { HostMapping, maxWindowBytes } from './common/host-mapping';
export { type1Reach, type Type1Reach } from './vfio/type1-reach';
export { RamBlock, type RamBlockOptions, type VcpuFdProvider } from './memory/ram-block';
export { GuestMemory, type GuestMemoryOptions, type AddBlockOptions } from './memory/guest-memory';
export { ConversionStats, type ConversionStep } from './memory/conversion-stats';
export type { DmaBackend, DmaMapper } from './vfio/dma-mapper';
export { VfioContainer, VfioGroup, VFIO_TYPE1v2_IOMMU } from './vfio/vfio-type1';
export { Iommufd, Ioas } from './vfio/iommufd';
export { VfioDevice, type RegionInfo, type RegionMapping } from './vfio/vfio-device';
export { AssignedDevice, type AssignOptions } from './vfio/assigned-device';
export { VfioDmaListener, type VfioDmaListenerOptions } from './vfio/vfio-dma-listener';
export { EduDevice } from './vfio/edu-device';
export { DmaProbe } from './vfio/dma-probe';
export { pciDevice, pciDevices, vfioPciDevices, type PciDeviceInfo } from './vfio/vfio-sysfs';
export { probe, type ProbeReport, type Feature, type Capability } from './probe';
// The raw addon stays inside: every fd it takes is owned by a class above (Kvm, Vm, VfioContainer, …).
export { nativeAvailable, nativeCalls } from './common/native';
// The VMM loop: vCPUs, guest programs, guest-driven conversions.
export { Vcpu, supportedCpuid, type Registers, type SpecialRegisters } from './vmm/vcpu';
export type { VcpuExit, IoExit, MmioExit, HypercallExit, MemoryFaultExit } from './vmm/vcpu-exit';
export { VmmLoop, type LoopVcpu, type LoopMemory, type ConversionEvent, type VmmReport, type VcpuOutcome } from './vmm/vmm-loop';
export { GuestVm, type GuestVmOptions } from './vmm/guest-vm';
export { GuestProtocol, type PortHandler, type GuestCheck } from './vmm/guest-ports';
export { guestProgram, GUEST_PROGRAMS, type GuestProgramName } from './vmm/guest-image';
export { runGuestSession, type GuestSessionOptions, type GuestSessionReport } from './vmm/guest-session';
export { decodeMapGpaRange, KVM_HC_MAP_GPA_RANGE, KVM_MAP_GPA_RANGE_ENCRYPTED } from './vmm/map-gpa-range';
