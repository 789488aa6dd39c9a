#!/usr/bin/env node
'use strict';
// The guestmem command; its code is compiled TypeScript in dist/ (npm run build).
const { main } = require('../dist/lib/cli/main.js');

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
