// guestmem's public API.

export { GranuleRange, bytesOf, type Bytes } from './byte-range';
export { GuestmemError, type GuestmemErrorCode } from './errors';
export { PageBitmap, type Run } from './page-bitmap';
export { RamBlockAttributes, type SectionInput, type StateChangeResult } from './ram-block-attributes';
export type { RamDiscardListener } from './ram-discard-listener';
export { RecordingListener } from './recording-listener';
export { STATE_CHANGE_CHANNEL, type PageState, type StateChangeMessage } from './state-change-channel';
export { Kvm, Vm, GuestMemfd, type MemoryRegion } from './kvm';
export * from './kvm-constants';
export { SharedMemory } from './shared-memory';
export { HostMapping, maxWindowBytes } from './host-mapping';
export { type1Reach, type Type1Reach } from './type1-reach';
export { RamBlock, type RamBlockOptions, type VcpuFdProvider } from './ram-block';
export { GuestMemory } from './guest-memory';
export { ConversionStats, type ConversionStep } from './conversion-stats';
export type { DmaBackend, DmaMapper } from './dma-mapper';
export { VfioContainer, VfioGroup, VFIO_TYPE1v2_IOMMU } from './vfio-type1';
export { Iommufd, Ioas } from './iommufd';
export { VfioDevice, type RegionInfo, type RegionMapping } from './vfio-device';
export { AssignedDevice, type AssignOptions } from './assigned-device';
export { VfioDmaListener, type VfioDmaListenerOptions } from './vfio-dma-listener';
export { EduDevice } from './edu-device';
export { DmaProbe } from './dma-probe';
export { pciDevice, pciDevices, vfioPciDevices, type PciDeviceInfo } from './vfio-sysfs';
export { probe, type ProbeReport, type Feature, type Capability } from './probe';
export { native, nativeAvailable, nativeCalls } from './native';
// The VMM loop: vCPUs, guest programs, guest-driven conversions.
export { Vcpu, supportedCpuid, type Registers, type SpecialRegisters } from './vmm/vcpu';
export type { VcpuExit, IoExit, MmioExit, HypercallExit, MemoryFaultExit } from './vmm/vcpu-exit';
export { VmmLoop, type LoopVcpu, type LoopMemory, type ConversionEvent, type VmmReport, type VcpuOutcome } from './vmm/vmm-loop';
export { GuestVm, type GuestVmOptions } from './vmm/guest-vm';
export { GuestProtocol, type PortHandler, type GuestCheck } from './vmm/guest-ports';
export { guestProgram, GUEST_PROGRAMS, type GuestProgramName } from './vmm/guest-image';
export { runGuestSession, type GuestSessionOptions, type GuestSessionReport } from './vmm/guest-session';
export { decodeMapGpaRange, KVM_HC_MAP_GPA_RANGE, KVM_MAP_GPA_RANGE_ENCRYPTED } from './vmm/map-gpa-range';
