// random's host side (guest/random.s). The host computes every request the guest will
// make (the same xorshift stream per vCPU) and keeps its own model of the data area, a
// plain array of page states. With one vCPU, at each sync it checks that the tracker and
// the VFIO listener agree with the model, that the memfd holds the guest's tags for pages
// turned shared and not for pages turned private (so KVM mapped them as it should), and
// samples the device's reach by DMA; it writes a word the guest checks through the shared
// page. With several vCPUs converting overlapping ranges at once, the order in which their
// conversions took the block's lock is not the order their events reach the main thread
// (each vCPU thread posts its own, after releasing the lock). So the checks run at the end,
// against what any order allows: a page ends as the last conversion to touch it, which is
// the last of one vCPU's conversions touching it (each vCPU converts in turn). Where those
// candidates agree, the model is that state; where they differ, it is the tracker's if the
// tracker's is one of them; and the device must reach exactly the pages that end shared.

import type { PageState } from '../../tracker/state-change-channel';
import { GuestRandom } from '../guest-random';
import type { ProgramContext, ProgramHost } from '../program-host';
import { readShared, writeShared } from '../shared-bytes';

const PAGE = 4096;
const MAX_RUN = 16;
const MASK = (1n << 64n) - 1n;

interface RandomState {
  model: PageState[];
  streams: GuestRandom[];
  /** The last converted range per vCPU, for its sync. */
  last: Map<number, { firstPage: number; pages: number; to: PageState }>;
  /** Per vCPU, the state its last conversion of each page asked for (undefined: none touched it). */
  lastTo: Array<Array<PageState | undefined>>;
  mismatches: number;
}

const states = new WeakMap<ProgramContext, RandomState>();

function state(context: ProgramContext): RandomState {
  let found = states.get(context);
  if (!found) {
    found = {
      model: trackerView(context),
      streams: Array.from({ length: context.vcpus }, (_, i) => new GuestRandom(context.seed, i)),
      last: new Map(),
      lastTo: Array.from({ length: context.vcpus }, () => new Array<PageState | undefined>(context.dataPages)),
      mismatches: 0,
    };
    states.set(context, found);
  }
  return found;
}

/** The data area's pages as the tracker has them. */
function trackerView(context: ProgramContext): PageState[] {
  const offset = Number(context.dataGpa) - context.block.gpa;
  const pages = new Array<PageState>(context.dataPages).fill('private');
  for (const [first, count] of context.block.attributes.runs('shared', { offset, size: context.dataPages * PAGE })) {
    pages.fill('shared', first - offset / PAGE, first - offset / PAGE + count);
  }
  return pages;
}

function agreement(context: ProgramContext, model: PageState[]): string | null {
  const tracker = trackerView(context);
  const differing = model.findIndex((s, i) => tracker[i] !== s);
  if (differing >= 0) return `tracker says page ${differing} is ${tracker[differing]}, the model ${model[differing]}`;
  if (context.listener) {
    const expected = model.filter((s) => s === 'shared').length + context.sharedOutsideData;
    if (context.listener.mappings !== expected) return `the VFIO listener holds ${context.listener.mappings} mappings, the model wants ${expected}`;
  }
  return null;
}

async function sampleDevice(context: ProgramContext, model: PageState[], page: number): Promise<void> {
  if (!context.probe) return;
  const offset = Number(context.dataGpa) - context.block.gpa + page * PAGE;
  const reached = await context.probe.canRead(context.block, offset, 0x40 + (page & 0x3f));
  const ok = reached === (model[page] === 'shared');
  context.check('device-reach', ok, `page ${page} is ${model[page]} and the device ${reached ? 'reads' : 'cannot read'} it`);
}

export const randomProgram: ProgramHost = {
  description: 'random conversions of the data area, checked against a model after each step',
  boot: (context) => ({
    dataGpa: context.dataGpa,
    dataPages: context.dataPages,
    iterations: context.iterations,
    seed: context.seed,
    maxRunPages: MAX_RUN,
    patterns: context.vcpus === 1,
  }),

  // The model starts from the data area as it is (another program may have left pages
  // shared) and from then on follows only the guest's requests.
  prepare(context) {
    state(context);
  },

  onConversion(event, context) {
    const s = state(context);
    const expected = s.streams[event.vcpu]!.step(context.dataPages, Math.min(MAX_RUN, context.dataPages));
    const firstPage = Number((event.gpa - context.dataGpa) / BigInt(PAGE));
    const pages = Number(event.size / BigInt(PAGE));
    if (firstPage !== expected.firstPage || pages !== expected.pages || event.to !== expected.to) {
      s.mismatches++;
      context.check('request', false, `vCPU ${event.vcpu} asked for pages ${firstPage}+${pages} ${event.to}, the host expected ${expected.firstPage}+${expected.pages} ${expected.to}`);
    }
    if (event.outcome === 'converted') {
      for (let page = firstPage; page < firstPage + pages; page++) {
        s.model[page] = event.to;
        s.lastTo[event.vcpu]![page] = event.to;
      }
    } else {
      context.check('conversion', false, `vCPU ${event.vcpu}'s conversion of pages ${firstPage}+${pages} to ${event.to} ${event.outcome}: ${event.reason}`);
    }
    s.last.set(event.vcpu, { firstPage, pages, to: event.to });
  },

  async onSync(step, vcpu, context) {
    if (context.vcpus > 1) return; // other vCPUs convert meanwhile: checked at the end
    const s = state(context);
    const last = s.last.get(vcpu);
    if (!last) return;
    const disagreement = agreement(context, s.model);
    context.check('agreement', disagreement === null, disagreement ?? `step ${step}: tracker, listener and model agree`);
    // The guest tagged each converted page with step << 32 | index: visible in the memfd
    // if and only if KVM mapped the page shared.
    let wrong = 0;
    for (let i = 0; i < last.pages; i++) {
      const gpa = context.dataGpa + BigInt((last.firstPage + i) * PAGE);
      const word = readShared(context.block, gpa, 8).readBigUInt64LE(0);
      const tag = (BigInt(step) << 32n) | BigInt(i);
      if ((word === tag) !== (last.to === 'shared')) wrong++;
    }
    context.check('memfd', wrong === 0, wrong === 0
      ? `step ${step}: the memfd ${last.to === 'shared' ? 'shows' : 'does not show'} the guest's tags in the ${last.pages} pages turned ${last.to}`
      : `step ${step}: ${wrong} of ${last.pages} pages turned ${last.to} ${last.to === 'shared' ? 'lack' : 'SHOW'} the guest's tag in the memfd`);
    await sampleDevice(context, s.model, last.firstPage);
    if (last.to === 'shared') {
      const gpa = context.dataGpa + BigInt(last.firstPage * PAGE);
      const word = Buffer.alloc(8);
      word.writeBigUInt64LE(~(BigInt(step) << 32n) & MASK);
      writeShared(context.block, gpa + 8n, word);
    }
  },

  async finish(context) {
    const s = state(context);
    if (s.mismatches === 0) context.check('requests', true, `every request matched the host's prediction of the guest's random stream`);
    if (context.vcpus > 1) settleConcurrentModel(context, s);
    const disagreement = agreement(context, s.model);
    context.check('final-agreement', disagreement === null, disagreement ?? 'at the end, tracker, listener and model agree');
    // No stale mapping: sample private pages (and a shared one) by DMA.
    const privatePages = s.model.flatMap((st, i) => (st === 'private' ? [i] : []));
    const sharedPages = s.model.flatMap((st, i) => (st === 'shared' ? [i] : []));
    for (const page of [...pick(privatePages, 3), ...pick(sharedPages, 1)]) await sampleDevice(context, s.model, page);
  },
};

/**
 * The model at the end of a run whose vCPUs converted at once (see the top): each page the
 * state all its candidates agree on, else the tracker's where it is a candidate. A tracker
 * state no order allows stays out of the model, for the agreement check to name.
 */
function settleConcurrentModel(context: ProgramContext, s: RandomState): void {
  const tracker = trackerView(context);
  for (let page = 0; page < s.model.length; page++) {
    const candidates = new Set<PageState>();
    for (const lastTo of s.lastTo) if (lastTo[page] !== undefined) candidates.add(lastTo[page]!);
    if (candidates.size === 1) s.model[page] = [...candidates][0]!;
    else if (candidates.size > 1 && candidates.has(tracker[page]!)) s.model[page] = tracker[page]!;
  }
}

function pick(pages: number[], count: number): number[] {
  if (pages.length <= count) return pages;
  const step = pages.length / count;
  return Array.from({ length: count }, (_, i) => pages[Math.floor(i * step)]!);
}
