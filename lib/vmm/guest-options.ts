// The options of a guest run (GuestVm.create, runGuestSession, VmmLoop), checked before
// anything is made: a wrong type found half way (a number bootGpa in bigint arithmetic, a
// null memory, a program that does not exist) was an engine TypeError after the VM had
// been changed; here it is a coded error, and nothing has happened yet.

import { GuestmemError, invalidArgType, invalidArgValue, outOfRange } from '../common/errors';
import { describeValue } from '../common/validators';
import { GuestMemory } from '../memory/guest-memory';
import { Kvm, Vm } from '../kvm/kvm';

function checkObject(value: unknown, what: string): void {
  if (value === null || typeof value !== 'object') throw invalidArgType(`${what} must be an object, got ${describeValue(value)}`);
}

function checkGpa(value: unknown, what: string): void {
  if (value === undefined) return;
  if (typeof value !== 'bigint') throw invalidArgType(`${what} must be a bigint, got ${describeValue(value)}`);
  if (value < 0n || value >= 1n << 64n) throw outOfRange(`${what} must be within [0, 2^64), got ${value}`);
}

/** kvm, memory (a GuestMemory of a VM in this process: a guest runs on its vCPUs) and bootGpa. */
export function checkGuestOptions(options: unknown, what: string): void {
  checkObject(options, what);
  const { kvm, memory, bootGpa, vcpus } = options as Record<string, unknown>;
  checkGpa(bootGpa, `${what}.bootGpa`);
  if (vcpus !== undefined && typeof vcpus !== 'number') throw invalidArgType(`${what}.vcpus must be a number, got ${describeValue(vcpus)}`);
  if (!(memory instanceof GuestMemory)) throw invalidArgType(`${what}.memory must be a GuestMemory, got ${describeValue(memory)}`);
  if (!(memory.vm instanceof Vm)) {
    throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', `${what}.memory belongs to a VM of another process (a DelegatedVm): a guest runs on vCPUs of a VM this process created`);
  }
  if (!(kvm instanceof Kvm)) throw invalidArgType(`${what}.kvm must be a Kvm, got ${describeValue(kvm)}`);
}

/** What runGuestSession adds: a known program and its data area. */
export function checkSessionOptions(options: unknown, programs: object): void {
  checkObject(options, 'session options');
  const { program, dataGpa, dataPages } = options as Record<string, unknown>;
  if (typeof program !== 'string' || !Object.hasOwn(programs, program)) {
    throw invalidArgValue(`program must be one of ${Object.keys(programs).join(', ')}, got ${describeValue(program)}`);
  }
  checkGuestOptions(options, 'session options');
  if (dataGpa === undefined) throw invalidArgType('session options.dataGpa must be a bigint, got undefined');
  checkGpa(dataGpa, 'session options.dataGpa');
  if (typeof dataPages !== 'number' || !Number.isSafeInteger(dataPages) || dataPages < 1) {
    throw outOfRange(`session options.dataPages must be a positive integer, got ${describeValue(dataPages)}`);
  }
}

/** A VmmLoop's vCPUs (an array of objects that run) and memory (with convert). */
export function checkLoopArguments(vcpus: unknown, memory: unknown): void {
  if (!Array.isArray(vcpus as unknown)) throw invalidArgType(`the loop's vCPUs must be an array, got ${describeValue(vcpus)}`);
  (vcpus as unknown[]).forEach((vcpu, i) => {
    if (vcpu === null || typeof vcpu !== 'object' || typeof (vcpu as { run?: unknown }).run !== 'function') throw invalidArgType(`vcpus[${i}] must be a vCPU (with run()), got ${describeValue(vcpu)}`);
  });
  if (memory === null || typeof memory !== 'object' || typeof (memory as { convert?: unknown }).convert !== 'function') {
    throw invalidArgType(`the loop's memory must have convert(gpa, size, to), got ${describeValue(memory)}`);
  }
}
