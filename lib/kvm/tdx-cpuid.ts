// A TD's CPUID and XFAM, worked out from what KVM and the TDX module report; pure functions
// over raw kvm_cpuid_entry2 records (40 bytes: function, index, flags, eax, ebx, ecx, edx,
// padding), so that they are tested without a TDX host.
//
// - Entries are matched on (function, index) exactly, as QEMU's tdx_filter_cpuid does. The
//   capability entries KVM_TDX_CAPABILITIES returns never carry flags (td_init_cpuid_entry2
//   fills a zeroed buffer), so they cannot say which leaves are indexed; and KVM's own lookup
//   of the configuration (kvm_find_cpuid_entry2, used by KVM_TDX_INIT_VM) takes the first
//   entry of a function unless that entry has KVM_CPUID_FLAG_SIGNIFCANT_INDEX. So each entry
//   we pass keeps the flags of KVM_GET_SUPPORTED_CPUID's entry, which does say.
// - XFAM (the XSAVE components a TD may use) is what KVM's CPUID leaf 0xD announces (XCR0
//   bits in 0xD.0 EDX:EAX, XSS bits in 0xD.1 EDX:ECX) within what the TDX module supports,
//   as QEMU's setup_td_xfam takes it from the CPU model's leaf 0xD; the configuration then
//   leaves out every component and feature bit that needs a component XFAM lacks, so that
//   the TD never sees, say, AVX with no YMM state.
// - A TD vCPU's KVM_SET_CPUID2 is the TD's own CPUID (KVM_TDX_GET_CPUID) plus KVM's entries
//   for the functions the TDX module does not report (the hypervisor range, which KVM
//   emulates): Documentation/virt/kvm/x86/intel-tdx.rst asks that it match the TD, else KVM
//   "may wrongly emulate CPUIDs or MSRs that the TDX module doesn't virtualize".

export const CPUID_ENTRY_BYTES = 40;
export const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;
/** XFAM bits 0 (x87) and 1 (SSE): fixed to 1 by the TDX module. */
export const TDX_XFAM_FIXED = 0x3n;

const REG = { eax: 12, ebx: 16, ecx: 20, edx: 24 } as const;
type Register = keyof typeof REG;

/** A feature bit that needs XSAVE components: (function, index, register, bit) -> XFAM mask. */
interface ComponentDependency {
  fn: number;
  index: number;
  reg: Register;
  bits: number;
  components: bigint;
}

const YMM = 1n << 2n;
const AVX512 = (1n << 5n) | (1n << 6n) | (1n << 7n);
const PT = 1n << 8n;
const PKRU = 1n << 9n;
const CET = (1n << 11n) | (1n << 12n);
const AMX = (1n << 17n) | (1n << 18n);
const bit = (...n: number[]): number => n.reduce((mask, b) => (mask | (1 << b)) >>> 0, 0);

/**
 * Feature bits and the XSAVE components they need (Linux's cpufeatures.h positions; the
 * pairs of QEMU's tdx_xfam_deps and the AVX family that needs YMM state).
 */
const COMPONENT_DEPENDENCIES: readonly ComponentDependency[] = [
  { fn: 1, index: 0, reg: 'ecx', bits: bit(12, 28, 29), components: YMM }, // FMA, AVX, F16C
  { fn: 7, index: 0, reg: 'ebx', bits: bit(5), components: YMM }, // AVX2
  { fn: 7, index: 1, reg: 'eax', bits: bit(4, 23), components: YMM }, // AVX-VNNI, AVX-IFMA
  { fn: 7, index: 0, reg: 'ebx', bits: bit(16, 17, 21, 26, 27, 28, 30, 31), components: YMM | AVX512 }, // AVX512F, DQ, IFMA, PF, ER, CD, BW, VL
  { fn: 7, index: 0, reg: 'ecx', bits: bit(1, 6, 11, 12, 14), components: YMM | AVX512 }, // VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ
  { fn: 7, index: 0, reg: 'edx', bits: bit(2, 3, 8, 23), components: YMM | AVX512 }, // 4VNNIW, 4FMAPS, VP2INTERSECT, FP16
  { fn: 7, index: 1, reg: 'eax', bits: bit(5), components: YMM | AVX512 }, // AVX512_BF16
  { fn: 7, index: 0, reg: 'ebx', bits: bit(25), components: PT }, // Intel PT
  { fn: 7, index: 0, reg: 'ecx', bits: bit(3), components: PKRU }, // PKU
  { fn: 7, index: 0, reg: 'ecx', bits: bit(7), components: CET }, // CET shadow stack
  { fn: 7, index: 0, reg: 'edx', bits: bit(20), components: CET }, // CET IBT
  { fn: 7, index: 0, reg: 'edx', bits: bit(22, 24, 25), components: AMX }, // AMX-BF16, TILE, INT8
];

/** The records of a kvm_cpuid_entry2 array, each as a Buffer view. */
export function cpuidRecords(entries: Uint8Array): Buffer[] {
  const bytes = Buffer.from(entries.buffer, entries.byteOffset, entries.byteLength);
  const records: Buffer[] = [];
  for (let at = 0; at + CPUID_ENTRY_BYTES <= bytes.length; at += CPUID_ENTRY_BYTES) records.push(bytes.subarray(at, at + CPUID_ENTRY_BYTES));
  return records;
}

/** The entry of exactly (fn, index), as QEMU's cpuid_find_entry finds it; undefined when there is none. */
export function findCpuidEntry(entries: Uint8Array, fn: number, index: number): Buffer | undefined {
  return cpuidRecords(entries).find((e) => e.readUInt32LE(0) === fn && e.readUInt32LE(4) === index);
}

function components(entry: Buffer | undefined, low: Register, high: Register): bigint {
  return entry ? BigInt(entry.readUInt32LE(REG[low])) | (BigInt(entry.readUInt32LE(REG[high])) << 32n) : 0n;
}

/**
 * The TD's XFAM: the components KVM's leaf 0xD announces (XCR0 from 0xD.0 EDX:EAX, XSS from
 * 0xD.1 EDX:ECX) that the TDX module supports, with x87 and SSE always.
 */
export function tdxXfam(supportedXfam: bigint, supported: Uint8Array): bigint {
  const announced = components(findCpuidEntry(supported, 0xd, 0), 'eax', 'edx') | components(findCpuidEntry(supported, 0xd, 1), 'ecx', 'edx');
  return TDX_XFAM_FIXED | (announced & supportedXfam);
}

/** Clears from `entry` what needs an XSAVE component outside `xfam`. */
function keepWithinXfam(entry: Buffer, xfam: bigint): void {
  const fn = entry.readUInt32LE(0);
  const index = entry.readUInt32LE(4);
  const clear = (reg: Register, mask: number): void => {
    entry.writeUInt32LE((entry.readUInt32LE(REG[reg]) & ~mask) >>> 0, REG[reg]);
  };
  for (const dep of COMPONENT_DEPENDENCIES) {
    if (dep.fn === fn && dep.index === index && (dep.components & ~xfam) !== 0n) clear(dep.reg, dep.bits);
  }
  if (fn !== 0xd || index > 1) return;
  // 0xD.0 EDX:EAX lists XCR0 components, 0xD.1 EDX:ECX the XSS ones: none beyond XFAM.
  const low: Register = index === 0 ? 'eax' : 'ecx';
  clear(low, Number(~xfam & 0xffffffffn));
  clear('edx', Number((~xfam >> 32n) & 0xffffffffn));
}

/**
 * The CPUID configuration of KVM_TDX_INIT_VM: for each entry the TDX module lets userspace
 * configure, KVM's supported value of exactly that (function, index) masked by the
 * configurable bits, with KVM's flags, and nothing that needs a component outside `xfam`.
 * An entry KVM does not report is left out (the TDX module then uses its own value).
 */
export function tdxCpuidConfiguration(configurable: Uint8Array, supported: Uint8Array, xfam: bigint = TDX_XFAM_FIXED): Uint8Array {
  const out: Buffer[] = [];
  for (const cap of cpuidRecords(configurable)) {
    const fn = cap.readUInt32LE(0);
    const index = cap.readUInt32LE(4);
    const source = findCpuidEntry(supported, fn, index);
    if (!source) continue;
    const entry = Buffer.alloc(CPUID_ENTRY_BYTES);
    entry.writeUInt32LE(fn, 0);
    entry.writeUInt32LE(index, 4);
    entry.writeUInt32LE(source.readUInt32LE(8), 8);
    for (const at of Object.values(REG)) entry.writeUInt32LE((source.readUInt32LE(at) & cap.readUInt32LE(at)) >>> 0, at);
    keepWithinXfam(entry, xfam);
    out.push(entry);
  }
  return Buffer.concat(out);
}

/**
 * A TD vCPU's KVM_SET_CPUID2: the TD's CPUID (KVM_TDX_GET_CPUID) as it is, then KVM's
 * entries for each function the TD's list lacks (the leaves KVM itself emulates).
 */
export function tdVcpuCpuid(tdCpuid: Uint8Array, kvmSupported: Uint8Array): Uint8Array {
  const td = cpuidRecords(tdCpuid);
  const present = new Set(td.map((e) => e.readUInt32LE(0)));
  const extra = cpuidRecords(kvmSupported).filter((e) => !present.has(e.readUInt32LE(0)));
  return Buffer.concat([...td, ...extra].map((e) => Buffer.from(e)));
}
