#!/usr/bin/env node
// Empties dist/ before tsc writes it, so that a test or module deleted from the sources
// does not live on (and keep running under mocha's dist/test/** globs) as a stale copy.
'use strict';

const fs = require('node:fs');
const path = require('node:path');

fs.rmSync(path.join(__dirname, '..', 'dist'), { recursive: true, force: true });
