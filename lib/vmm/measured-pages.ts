// The pages an SNP or TDX launch measured into private memory, until the guest itself asks
// for them shared. A memory fault that would turn one shared (KVM_EXIT_MEMORY_FAULT without
// KVM_MEMORY_EXIT_FLAG_PRIVATE) is refused instead of converted: the conversion would punch
// the measured contents out of the guest_memfd, behind the guest's back. On SNP that fault is
// what a guest gets when its page tables lack the C-bit (its first access to a measured page
// is then a shared one); on TDX, an access through the shared GPA alias. Either way the guest
// never asked for the page to be shared, and the host must not decide it for it: the VM stops
// with the reason, where converting would leave the guest running on zeroes. A guest that
// asks with MAP_GPA_RANGE (SNP's page-state change, TDX's MapGPA) gets its conversion, and
// the pages are no longer held.

/** [start, end) in guest physical bytes. */
type Span = readonly [start: bigint, end: bigint];

export class MeasuredPages {
  #spans: Span[] = [];

  /** The launch measured [gpa, gpa + size) into private memory. */
  add(gpa: bigint, size: bigint): void {
    if (size > 0n) this.#spans.push([gpa, gpa + size]);
  }

  /** The guest asked for [gpa, gpa + size) shared itself: those pages are no longer held. */
  releasedByGuest(gpa: bigint, size: bigint): void {
    const end = gpa + size;
    this.#spans = this.#spans.flatMap(([s, e]): Span[] => {
      if (e <= gpa || s >= end) return [[s, e]];
      const kept: Span[] = [];
      if (s < gpa) kept.push([s, gpa]);
      if (e > end) kept.push([end, e]);
      return kept;
    });
  }

  /** Why a memory fault may not turn [gpa, gpa + size) `to` (null: it may). */
  faultRefusal(gpa: bigint, size: bigint, to: 'shared' | 'private'): string | null {
    if (to !== 'shared') return null;
    const end = gpa + size;
    const hit = this.#spans.find(([s, e]) => s < end && e > gpa);
    if (!hit) return null;
    const from = hit[0] > gpa ? hit[0] : gpa;
    const to_ = hit[1] < end ? hit[1] : end;
    return `a shared access to [0x${from.toString(16)}, 0x${to_.toString(16)}), which the launch measured into private memory and the guest never asked to share: converting it would discard the measured contents (an SNP guest whose page tables lack the C-bit, or a TD using the shared alias, faults so)`;
  }

  /** The measured spans still held, for reports. */
  get spans(): ReadonlyArray<Span> {
    return this.#spans;
  }
}
