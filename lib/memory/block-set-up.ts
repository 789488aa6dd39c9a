// The long part of making a RAM block: marking it private in KVM, as QEMU does for a
// guest_memfd block. KVM 6.12 keeps one xarray entry per page, so a 256 GiB block takes over
// a minute (docs/library.md). It goes in chunks: after each one the caller hears how far it
// got, and an AbortSignal is heard before the next; driven asynchronously, the event loop
// runs between chunks, so a timer or a signal handler can abort it. One body serves
// RamBlock's constructor (runSync) and RamBlock.create (runAsync).

import { abortError, GuestmemError, invalidArgType, messageOf as describe } from '../common/errors';
import type { Steps } from '../common/steps';
import type { MemoryVm } from '../kvm/memory-vm';

/** How far a block's set-up is: bytes of the block marked private in KVM so far, of `total`. */
export interface BlockSetUpProgress {
  done: number;
  total: number;
}

/** What a caller gives a block's set-up to hear of it and to stop it. */
export interface BlockSetUpOptions {
  /**
   * Aborts the set-up between chunks: it throws Node's AbortError (code 'ABORT_ERR') and
   * leaves nothing made (KVM's attributes back to shared, the memslot deleted, the backings
   * closed). A signal already aborted refuses before any syscall.
   */
  signal?: AbortSignal;
  /** Called after each chunk (1 GiB) marked private; a throw fails the set-up, undone as an abort is. */
  onProgress?: (progress: BlockSetUpProgress) => void;
}

/** Bytes marked private per KVM_SET_MEMORY_ATTRIBUTES call: about 0.3 s in the harness VM. */
export const MARK_CHUNK_BYTES = 1 << 30;

/** Checks a set-up's signal and progress callback before any syscall; refuses an aborted signal. */
export function checkSetUpOptions(options: BlockSetUpOptions, what: string): void {
  const { signal, onProgress } = options;
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw invalidArgType(`signal must be an AbortSignal, got ${signal === null ? 'null' : typeof signal}`);
  if (onProgress !== undefined && typeof onProgress !== 'function') throw invalidArgType(`onProgress must be a function, got ${onProgress === null ? 'null' : typeof onProgress}`);
  if (signal?.aborted) throw abortError(`${what} was aborted before it started`, signal);
}

function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * Marks [gpa, gpa + size) private in KVM chunk by chunk. On an abort, a failed chunk or a
 * throwing onProgress it sets what it marked back to shared (KVM's default) and rethrows;
 * if that fails too, ERR_GUESTMEM_ROLLBACK_FAILED. With `sync` it never yields.
 */
export function* markPrivate(vm: MemoryVm, gpa: number, size: number, granularity: number, options: BlockSetUpOptions, what: string, sync: boolean): Steps<void> {
  const chunk = Math.max(MARK_CHUNK_BYTES, granularity);
  const { signal, onProgress } = options;
  let done = 0;
  try {
    while (done < size) {
      if (signal?.aborted) throw abortError(`${what} was aborted after marking ${done} of ${size} bytes private; nothing was kept`, signal);
      const length = Math.min(chunk, size - done);
      vm.setMemoryAttributes(gpa + done, length, 'private');
      done += length;
      onProgress?.({ done, total: size });
      if (!sync && done < size) yield nextTurn();
    }
  } catch (error) {
    if (done > 0) {
      try {
        vm.setMemoryAttributes(gpa, done, 'shared');
      } catch (undoError) {
        throw new GuestmemError(
          'ERR_GUESTMEM_ROLLBACK_FAILED',
          `${describe(error)}; setting [0x${gpa.toString(16)}, +0x${done.toString(16)}) back to shared also failed, KVM keeps it private: ${describe(undoError)}`,
          { cause: error, errors: [undoError] },
        );
      }
    }
    throw error;
  }
}
