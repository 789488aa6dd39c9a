// The type1 wall at real sizes: one DMA entry per 4 KiB granule, 65535 entries by default.

import assert from 'node:assert/strict';
import { type1Reach } from '../../lib/vfio/type1-reach';
import { formatReach } from '../../lib/cli/probe-command';

const GiB = 2 ** 30;

describe('type1 reach', () => {
  it('caps shared memory at dma_entry_limit granules whatever the guest size', () => {
    const eight = type1Reach(65535, 8 * GiB);
    assert.equal(eight.maxSharedBytes, 65535n * 4096n);
    assert.equal(eight.entriesForWholeGuest, 2097152n);
    assert.equal(eight.sharedFraction, 65535 / 2097152);
    const tera = type1Reach(65535, 1n << 40n);
    assert.equal(tera.entriesForWholeGuest, 1n << 28n);
    assert.equal(type1Reach(65535, 128 * 2 ** 20).sharedFraction, 1, 'a small guest can share all of itself');
    assert.equal(type1Reach(65535, 8 * GiB, 2 * 2 ** 20).sharedFraction, 1, 'at 2 MiB granules 8 GiB fits');
  });

  it('says it in the probe, with what all of the guest would need and why iommufd has no wall', () => {
    const text = formatReach(type1Reach(65535, 8 * GiB));
    assert.match(text, /at most 262140 KiB \(~256 MiB\) of a guest at once/);
    assert.match(text, /for a guest of 8 GiB: 3\.12% of its memory shared at most, all of it needs dma_entry_limit >= 2097152/);
    assert.match(text, /iommufd keeps no count of mappings/);
  });
});
