// Loaded by mocha (.mocharc.kernel.json "require") before any spec: turns the addon's test-only
// fault injection on, with no rule armed, so that the fault-matrix suite can arm rules.
// Without a rule the other suites see the kernel as it is.
process.env.GUESTMEM_FAULTS ??= '';
