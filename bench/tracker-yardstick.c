/*
 * The tracker's yardstick: a small, plain C implementation of the same semantics as
 * lib/tracker/ram-block-attributes.ts (a state change validates its byte range, finds
 * whether the range is wholly shared, wholly private or a mixture, flips only the granules
 * that change, run by run, and notifies each listener of every changed run clipped to its
 * section), with 64-bit words. `npm run bench` builds it with gcc -O2 and runs the same
 * workloads (same generator, same seeds) on it and on the TypeScript tracker, and prints
 * the ratio. It is not part of the package.
 *
 * Output: one line per workload, "name ns_per_conversion checksum", the time of the second
 * million conversions (generated before the clock starts; steady state: start-up and
 * warm-up drop out), the best of ROUNDS
 * rounds (argv[2], default 3) on a fresh tracker each: on a shared machine, the round
 * least disturbed by other work.
 *
 * Each workload runs twice: bare, and "+lock" with each conversion under a lock that makes
 * the same memory operations as lib/memory/block-lock.ts's (a compare-exchange to take it,
 * the intent's plain stores, a sequentially consistent store to free it, a load of the
 * waiter count): what a C VMM whose vCPU threads convert pays for its own lock (QEMU takes
 * the BQL), so that the library, which takes its lock on every conversion, is also
 * compared like for like.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PAGE 4096ULL
#define MIB (1ULL << 20)
#define GIB (1ULL << 30)
#define TIB (1ULL << 40)

typedef struct listener {
  uint64_t first, count; /* section, in granules */
  uint64_t populated, discarded;
  void (*populate)(struct listener *, uint64_t first, uint64_t count);
  void (*discard)(struct listener *, uint64_t first, uint64_t count);
} listener;

__attribute__((noinline)) static void count_populate(listener *l, uint64_t first, uint64_t count) {
  (void)first;
  l->populated += count;
}
__attribute__((noinline)) static void count_discard(listener *l, uint64_t first, uint64_t count) {
  (void)first;
  l->discarded += count;
}

typedef struct {
  uint64_t granules;
  uint64_t *words;
  uint64_t shared;
  listener *listeners[8];
  int nlisteners;
  uint64_t *runs; /* flat (first, count) pairs, reused */
  uint64_t runs_cap;
} tracker;

typedef struct {
  int from; /* 0 private, 1 shared, 2 mixture, -1 rejected */
  uint64_t changed, runs;
} result;

static void tracker_init(tracker *t, uint64_t size) {
  memset(t, 0, sizeof *t);
  t->granules = size / PAGE;
  t->words = calloc((t->granules + 63) / 64, 8);
  memset(t->words, 0, (t->granules + 63) / 64 * 8); /* touch it now, as the TS bitmap does */
  t->runs_cap = 1024;
  t->runs = malloc(t->runs_cap * 16);
}

static uint64_t mask(unsigned lo, unsigned hi) { /* bits [lo, hi), 0 <= lo < hi <= 64 */
  return (hi - lo == 64 ? ~0ULL : ((1ULL << (hi - lo)) - 1)) << lo;
}

/* First bit equal to `value` in [from, end), or end. */
static uint64_t scan(const tracker *t, uint64_t from, uint64_t end, int value) {
  if (from >= end) return end;
  uint64_t invert = value ? 0 : ~0ULL;
  uint64_t i = from / 64, last = (end - 1) / 64;
  uint64_t w = (t->words[i] ^ invert) & mask(from % 64, 64);
  while (w == 0) {
    if (++i > last) return end;
    w = t->words[i] ^ invert;
  }
  uint64_t found = i * 64 + (uint64_t)__builtin_ctzll(w);
  return found < end ? found : end;
}

static void fill(tracker *t, uint64_t start, uint64_t count, int value) {
  uint64_t end = start + count, fw = start / 64, lw = (end - 1) / 64;
  if (fw == lw) {
    uint64_t m = mask(start % 64, (end - 1) % 64 + 1);
    t->words[fw] = value ? t->words[fw] | m : t->words[fw] & ~m;
    return;
  }
  uint64_t head = mask(start % 64, 64), tail = mask(0, (end - 1) % 64 + 1);
  t->words[fw] = value ? t->words[fw] | head : t->words[fw] & ~head;
  for (uint64_t i = fw + 1; i < lw; i++) t->words[i] = value ? ~0ULL : 0;
  t->words[lw] = value ? t->words[lw] | tail : t->words[lw] & ~tail;
}

static void push_run(tracker *t, uint64_t n, uint64_t first, uint64_t count) {
  if (2 * n + 2 > t->runs_cap * 2) {
    t->runs_cap *= 2;
    t->runs = realloc(t->runs, t->runs_cap * 16);
  }
  t->runs[2 * n] = first;
  t->runs[2 * n + 1] = count;
}

static result state_change(tracker *t, uint64_t offset, uint64_t size, int to_shared) {
  result r = {-1, 0, 0};
  if (size == 0 || offset % PAGE || size % PAGE || offset + size < offset || (offset + size) / PAGE > t->granules) return r;
  uint64_t first = offset / PAGE, count = size / PAGE, end = first + count;
  uint64_t first_private = scan(t, first, end, 0);
  uint64_t first_shared = first_private >= end ? first : scan(t, first, end, 1);
  r.from = first_private >= end ? 1 : first_shared >= end ? 0 : 2;
  uint64_t n = 0;
  if (r.from == 2) {
    uint64_t cursor = to_shared ? first_private : first_shared;
    while (cursor < end) {
      uint64_t s = scan(t, cursor, end, !to_shared);
      if (s >= end) break;
      uint64_t e = scan(t, s, end, to_shared);
      push_run(t, n++, s, e - s);
      cursor = e;
    }
  } else if (r.from != to_shared) {
    push_run(t, n++, first, count);
  }
  for (uint64_t i = 0; i < n; i++) {
    fill(t, t->runs[2 * i], t->runs[2 * i + 1], to_shared);
    r.changed += t->runs[2 * i + 1];
  }
  t->shared += to_shared ? r.changed : -r.changed;
  for (int k = 0; k < t->nlisteners; k++) {
    listener *l = t->listeners[k];
    for (uint64_t i = 0; i < n; i++) {
      uint64_t s = t->runs[2 * i] > l->first ? t->runs[2 * i] : l->first;
      uint64_t e1 = t->runs[2 * i] + t->runs[2 * i + 1], e2 = l->first + l->count;
      uint64_t e = e1 < e2 ? e1 : e2;
      if (s < e) (to_shared ? l->populate : l->discard)(l, s, e - s);
    }
  }
  r.runs = n;
  return r;
}

static uint32_t state;
static uint32_t next(void) { /* xorshift32 shifted to 31 bits, as bench/tracker.bench.ts */
  state ^= state << 13;
  state ^= state >> 17;
  state ^= state << 5;
  return state >> 1;
}

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

typedef void (*workload)(tracker *, uint64_t i, uint64_t *offset, uint64_t *size, int *to);

/* A round's conversions, generated before the clock starts, as the TypeScript side does. */
typedef struct {
  uint64_t *offset, *size;
  int *to;
} operations;

static uint64_t pool_pages, window, block_pages;
static void boot(tracker *t, uint64_t i, uint64_t *offset, uint64_t *size, int *to) {
  (void)t; (void)i;
  uint64_t pages = 1ULL << (next() % 10);
  *offset = (next() % (pool_pages - pages + 1)) * PAGE;
  *size = pages * PAGE;
  *to = next() & 1;
}
static void mixture(tracker *t, uint64_t i, uint64_t *offset, uint64_t *size, int *to) {
  (void)t; (void)i;
  uint64_t pages = 1 + next() % 512;
  *offset = (next() % (window - pages)) * PAGE;
  *size = pages * PAGE;
  *to = next() & 1;
}
static void top_flip(tracker *t, uint64_t i, uint64_t *offset, uint64_t *size, int *to) {
  (void)t;
  *offset = (block_pages - window + next() % window) * PAGE;
  *size = PAGE;
  *to = (int)(i & 1);
}

/* The block lock's memory, as block-lock.ts lays it out (Int32 words, then Float64s). */
typedef struct {
  int32_t word, waiters, kind, to, step, pad;
  double first, count;
} block_lock;

static inline void lock_take(block_lock *l, int32_t me) {
  int32_t expected = 0;
  if (!__atomic_compare_exchange_n(&l->word, &expected, me, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) abort(); /* uncontended here */
  l->count = 0;
  l->step = 0;
  l->kind = 1;
}

static inline void lock_intend(block_lock *l, uint64_t offset, uint64_t size, int to_shared) {
  l->first = (double)(offset / PAGE);
  l->count = (double)(size / PAGE);
  l->to = to_shared;
}

static inline void lock_release(block_lock *l) {
  l->kind = 0;
  __atomic_store_n(&l->word, 0, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&l->waiters, __ATOMIC_SEQ_CST) > 0) abort(); /* nobody waits here */
}

static double round_ns(uint64_t block, uint64_t shared_at_boot, const operations *ops, uint64_t million, uint64_t *checksum_out, block_lock *lock) {
  tracker t;
  tracker_init(&t, block);
  listener l = {0, block / PAGE, 0, 0, count_populate, count_discard};
  t.listeners[t.nlisteners++] = &l;
  if (shared_at_boot) state_change(&t, 0, shared_at_boot, 1);
  uint64_t checksum = 0;
  double mid = 0;
  for (uint64_t i = 0; i < 2 * million; i++) {
    if (i == million) mid = now_ns();
    if (lock) {
      lock_take(lock, 1);
      lock_intend(lock, ops->offset[i], ops->size[i], ops->to[i]);
    }
    result r = state_change(&t, ops->offset[i], ops->size[i], ops->to[i]);
    if (lock) lock_release(lock);
    checksum += r.changed + (uint64_t)r.from;
  }
  double end = now_ns();
  *checksum_out = checksum + l.populated - l.discarded;
  free(t.words);
  free(t.runs);
  return (end - mid) / (double)million;
}

static void run(const char *name, uint64_t block, uint64_t shared_at_boot, workload w, uint32_t seed, uint64_t million, int rounds) {
  operations ops = {malloc(2 * million * 8), malloc(2 * million * 8), malloc(2 * million * sizeof(int))};
  block_pages = block / PAGE;
  state = seed;
  for (uint64_t i = 0; i < 2 * million; i++) w(NULL, i, &ops.offset[i], &ops.size[i], &ops.to[i]);
  /* Static: the compiler must treat the lock as memory another thread may see. */
  static block_lock lock;
  for (int locked = 0; locked < 2; locked++) {
    uint64_t checksum = 0;
    double best = 0;
    for (int r = 0; r < rounds; r++) {
      double ns = round_ns(block, shared_at_boot, &ops, million, &checksum, locked ? &lock : NULL);
      if (r == 0 || ns < best) best = ns;
    }
    printf("%s%s %.2f %llu\n", name, locked ? "+lock" : "", best, (unsigned long long)checksum);
  }
  free(ops.offset);
  free(ops.size);
  free(ops.to);
}

int main(int argc, char **argv) {
  uint64_t million = argc > 1 ? strtoull(argv[1], NULL, 10) : 1000000;
  int rounds = argc > 2 ? atoi(argv[2]) : 3;
  pool_pages = 64 * MIB / PAGE;
  window = 256 * MIB / PAGE;
  run("boot", 16 * GIB, 64 * MIB, boot, 1, million, rounds);
  run("mixture", 16 * GIB, 0, mixture, 2, million, rounds);
  run("flip-1GiB", GIB, 0, top_flip, 3, million, rounds);
  run("flip-1TiB", TIB, 0, top_flip, 3, million, rounds);
  return 0;
}
