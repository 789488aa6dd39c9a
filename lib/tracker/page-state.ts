// The two states a page of guest memory can be in, as the tracker and KVM's memory
// attributes name them: shared with the host (and devices), or private to the guest.

/** A page's state: `shared` (the host and devices may reach it) or `private` (the guest's alone). */
export type PageState = 'shared' | 'private';
