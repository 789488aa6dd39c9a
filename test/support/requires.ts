// Skip by capability, never by whether a device node exists. Inside the harness VM
// (GUESTMEM_REQUIRE_KERNEL=1) a missing capability is a failure: there, nothing may skip.

import { capabilityFeature, probe, type Capability, type ProbeReport } from '../../lib/host/probe';

let cached: ProbeReport | null = null;

export function hostReport(): ProbeReport {
  cached ??= probe();
  return cached;
}

export function requires(...capabilities: Capability[]): (this: Mocha.Context) => void {
  return function (this: Mocha.Context) {
    const report = hostReport();
    const lacking = capabilities
      .map((capability) => [capability, capabilityFeature(report, capability)] as const)
      .filter(([, feature]) => !feature.ok)
      .map(([capability, feature]) => `${capability}: ${feature.why}`);
    if (lacking.length === 0) return;
    const reason = lacking.join('; ');
    if (process.env.GUESTMEM_REQUIRE_KERNEL === '1') {
      throw new Error(`this environment must provide it, but: ${reason}`);
    }
    console.log(`      (skipped: ${reason})`);
    this.skip();
  };
}
