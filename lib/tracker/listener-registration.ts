// What registering and unregistering a listener tells it, inside the tracker's queue: its
// attach, then the replay of what it must hold (register), or the discard of what it holds
// (unregister), through the same fan-out as a change (fan-out.ts), so that a refusal is
// undone and reported as a change's is. The registry changes only once the listener agreed.

import type { GranuleRange } from '../common/byte-range';
import { GuestmemError } from '../common/errors';
import { FanOut, ToldRuns, fanOutAsync } from './fan-out';
import { isThenable, type ListenerCalls } from './listener-calls';
import type { Run } from './page-bitmap';
import { listenerName, type CheckedListener, type RamDiscardListener } from './ram-discard-listener';
import type { TrackerRegistry, Registration } from './tracker-registry';
import type { TrackerState } from './tracker-state';

/** The parts of a tracker that a registration changes or tells. */
export interface RegistrationParts {
  readonly name: string;
  readonly granularity: number;
  readonly state: TrackerState;
  readonly registry: TrackerRegistry;
  readonly calls: ListenerCalls;
}

/**
 * Registers a checked listener on `range`: its attach (an async one awaited: its rejection
 * refuses the registration like a throw would, instead of escaping as an unhandled
 * rejection after register resolved), then every populated run of the section.
 */
export async function registerListener(parts: RegistrationParts, listener: RamDiscardListener, checked: CheckedListener, range: GranuleRange): Promise<void> {
  const { registry, calls } = parts;
  if (registry.has(listener)) {
    throw new GuestmemError('ERR_GUESTMEM_ALREADY_REGISTERED', `listener "${checked.name}" is already registered on ${parts.name}`);
  }
  const registration = registry.create(listener, checked, range);
  if (checked.attach) {
    try {
      const answer = calls.call(listener, checked.attach, range);
      if (isThenable(answer)) await calls.settle(answer);
    } catch (cause) {
      throw calls.listenerFailed(registration, 'attach', [range], cause);
    }
  }
  await tellOne(parts, registration, parts.state.populatedRuns(range.first, range.count), true, null);
  registry.add(registration);
}

/** Unregisters a listener after discarding what it holds: its whole section if it supports double discard, else each populated run. */
export async function unregisterListener(parts: RegistrationParts, listener: RamDiscardListener): Promise<void> {
  const registration = parts.registry.get(listener);
  if (!registration) {
    throw new GuestmemError('ERR_GUESTMEM_NOT_REGISTERED', `listener "${listenerName(listener)}" is not registered on ${parts.name}`);
  }
  const { section } = registration;
  const runs: Run[] = registration.doubleDiscardSupported ? [[section.first, section.count]] : parts.state.populatedRuns(section.first, section.count);
  await tellOne(parts, registration, runs, false, section);
  parts.registry.remove(registration);
}

/**
 * Tells one registration of `runs` (inside its section), as a change tells every one, and
 * undoes what it accepted if a later run fails. `whole` is the section's own range object,
 * handed over where a run is the whole section.
 */
function tellOne(parts: RegistrationParts, registration: Registration, runs: Run[], populate: boolean, whole: GranuleRange | null): Promise<void> {
  const told = new ToldRuns(parts.granularity);
  for (const [first, count] of runs) told.runs.push(first, count);
  told.first = registration.section.first;
  told.count = registration.section.count;
  told.rangeObject = whole;
  const fan = new FanOut(parts.calls, parts.registry, parts.state, parts.granularity);
  return fanOutAsync(fan, populate, told, registration, true, null);
}
