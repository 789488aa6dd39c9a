// The page the host fills before a guest program starts (its address in rdi): what to do
// and where. Layout mirrored in guest/common.inc (BOOT_*).

import { outOfRange } from '../common/errors';

export const BOOT_INFO_SIZE = 4096;
/** "GUESTMEM" in little-endian bytes. */
export const BOOT_MAGIC = 0x4d454d5453455547n;
const REQUESTS_OFFSET = 0x40;
const REQUEST_SIZE = 24;
export const MAX_BOOT_REQUESTS = Math.floor((BOOT_INFO_SIZE - REQUESTS_OFFSET) / REQUEST_SIZE);
export const FLAG_PATTERNS = 1n;

/** One KVM_HC_MAP_GPA_RANGE request, as the `requests` program makes it. */
export interface MapRequest {
  gpa: bigint;
  pages: bigint;
  attributes: bigint;
}

export interface BootParams {
  /** The random program's seed; the misbehave program's mode. */
  seed?: bigint;
  iterations?: number;
  /** The area the program converts. */
  dataGpa: bigint;
  dataPages: number;
  /** Longest range the random program converts at once, in pages (default 16). */
  maxRunPages?: number;
  /** Write and read back patterns after each conversion (the random program). */
  patterns?: boolean;
  requests?: MapRequest[];
}

const U64_MAX = (1n << 64n) - 1n;

export function encodeBootInfo(params: BootParams): Uint8Array {
  const bytes = new Uint8Array(BOOT_INFO_SIZE);
  const words = new DataView(bytes.buffer);
  const put = (offset: number, value: bigint, name: string) => {
    if (value < 0n || value > U64_MAX) throw outOfRange(`boot info ${name} must fit in 64 bits, got ${value}`);
    words.setBigUint64(offset, value, true);
  };
  const requests = params.requests ?? [];
  if (requests.length > MAX_BOOT_REQUESTS) throw outOfRange(`at most ${MAX_BOOT_REQUESTS} requests fit the boot page, got ${requests.length}`);
  put(0x00, BOOT_MAGIC, 'magic');
  put(0x08, params.seed ?? 0n, 'seed');
  put(0x10, BigInt(params.iterations ?? 0), 'iterations');
  put(0x18, params.dataGpa, 'dataGpa');
  put(0x20, BigInt(params.dataPages), 'dataPages');
  put(0x28, BigInt(params.maxRunPages ?? 16), 'maxRunPages');
  put(0x30, params.patterns ? FLAG_PATTERNS : 0n, 'flags');
  put(0x38, BigInt(requests.length), 'request count');
  requests.forEach((request, i) => {
    const at = REQUESTS_OFFSET + i * REQUEST_SIZE;
    put(at, request.gpa, `request ${i} gpa`);
    put(at + 8, request.pages, `request ${i} pages`);
    put(at + 16, request.attributes, `request ${i} attributes`);
  });
  return bytes;
}
