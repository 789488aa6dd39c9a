// plug's host side (guest/plug.s): the guest converts its data area and asks, through
// PORT_PLUG, to unplug and plug it. At each sync the host checks the plug state and what
// the device reaches by DMA: the shared area (1), nothing once unplugged (2), the area
// again once plugged back (3), nothing of it once private, unplugged and plugged (4).

import type { ProgramContext, ProgramHost } from '../program-host';
import { PORT_PLUG, plugPort } from '../plug-port';

const PAGE = 4096;

/** What each sync expects: the area plugged, and the device reaching it. */
const EXPECT: Record<number, { name: string; plugged: boolean; reach: boolean }> = {
  1: { name: 'device-reaches-shared', plugged: true, reach: true },
  2: { name: 'device-loses-unplugged', plugged: false, reach: false },
  3: { name: 'device-reaches-plugged', plugged: true, reach: true },
  4: { name: 'device-blocked-private', plugged: true, reach: false },
};

function areaRange(context: ProgramContext): [first: number, count: number] {
  return [(Number(context.dataGpa) - context.block.gpa) / PAGE, context.dataPages];
}

export const plugProgram: ProgramHost = {
  description: 'the guest converts its data area and asks the host to unplug and plug it (PORT_PLUG); the device follows',
  boot: (context) => ({ dataGpa: context.dataGpa, dataPages: context.dataPages }),
  ports: (context) => new Map([[PORT_PLUG, plugPort(context.block, context.dataGpa, context.dataPages * PAGE)]]),
  async onSync(step, _vcpu, context) {
    const expect = EXPECT[step];
    if (!expect) return;
    const [first, count] = areaRange(context);
    const unplugged = context.block.plugSource.runs('unplugged', first, count).length > 0;
    context.check(`plug-state-${step}`, unplugged !== expect.plugged, `the data area is ${unplugged ? 'unplugged' : 'plugged'}`);
    if (context.probe) {
      const reached = await context.probe.canRead(context.block, first * PAGE, 0x60 + step);
      context.check(expect.name, reached === expect.reach, `the device ${reached ? 'reads' : 'cannot read'} the data area by DMA`);
    }
  },
};
