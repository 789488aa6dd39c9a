// The host side of each guest program in guest/.

import type { GuestProgramName } from '../guest-image';
import type { ProgramHost } from '../program-host';
import { randomProgram } from './random';
import { secretProgram } from './secret';
import { plugProgram } from './plug';
import { secretSnpProgram } from './secret-snp';

export const PROGRAM_HOSTS: Record<GuestProgramName, ProgramHost> = {
  secret: secretProgram,
  random: randomProgram,
  plug: plugProgram,
  'secret-snp': secretSnpProgram,
  // The TD reaches the protocol's ports through TDG.VP.VMCALL<Instruction.IO>: secret's host
  // side serves it unchanged.
  'secret-tdx': { ...secretProgram, description: 'secret as a TD: MapGPA, Instruction.IO and page acceptance through TDCALL', vmType: 'tdx' },
  loop: {
    description: 'N x (private, shared) of one page, for the benchmark',
    boot: (context) => ({ dataGpa: context.dataGpa, dataPages: 1, iterations: context.iterations }),
  },
  requests: {
    description: 'the MAP_GPA_RANGE requests of the boot table, each result reported back',
    boot: (context) => ({ dataGpa: context.dataGpa, dataPages: context.dataPages }),
  },
  misbehave: {
    description: 'what a VMM must survive: spin (seed 0), triple fault (1), a stray port (2), hlt (3), ud2 (4)',
    boot: (context) => ({ dataGpa: context.dataGpa, dataPages: context.dataPages, seed: context.seed }),
  },
};
