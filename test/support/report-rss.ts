// Preloaded (node --require) into a child under test: at exit, writes its peak resident
// memory in KiB to the file GUESTMEM_TEST_RSS_FILE names, so the parent can bound it.

import fs from 'node:fs';

const file = process.env.GUESTMEM_TEST_RSS_FILE;
if (file) {
  process.on('exit', () => {
    fs.writeFileSync(file, String(process.resourceUsage().maxRSS));
  });
}
