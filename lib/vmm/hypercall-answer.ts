// What the guest is answered when the VMM refuses or rolls back a MAP_GPA_RANGE request, by
// VM type. KVM hands run->hypercall.ret to the guest as it is for most VM types, and there
// the project answers -KVM_EINVAL (a request it refuses) or -KVM_EFAULT (a conversion that
// failed and was rolled back), as KVM's own checks do. For SEV-SNP and TDX, KVM turns the
// answer into the guest's own protocol and accepts only 0 or a positive EINVAL or EAGAIN
// (x86.h kvm_is_valid_map_gpa_range_ret; api.rst, KVM_CAP_EXIT_HYPERCALL: "Userspace may
// fail the hypercall by setting hypercall.ret to EINVAL or may request the hypercall to be
// retried ... by setting hypercall.ret to EAGAIN"); anything else makes the next KVM_RUN
// fail with EINVAL (sev.c snp_complete_psc_msr / snp_complete_one_psc, tdx.c
// tdx_complete_vmcall_map_gpa), and the guest never hears back. There EINVAL (TDVMCALL
// INVALID_OPERAND; an SNP page-state error) refuses a request, and EAGAIN (TDVMCALL RETRY,
// the TD retries from where it stopped) answers a conversion that failed and changed
// nothing, which may well succeed later (memory, DMA mappings).

import { VM_TYPES } from '../kvm/kvm-constants';
import { KVM_EFAULT, KVM_EINVAL } from './map-gpa-range';

/** Linux's errno values, positive, as SNP's and TDX's completion of the hypercall wants them. */
export const EINVAL = 22;
export const EAGAIN = 11;

/** A request refused before anything changed, or a conversion that failed and was rolled back. */
export type HypercallFailureKind = 'rejected' | 'failed';

/** True for the VM types whose MAP_GPA_RANGE answer KVM checks (SNP, TDX). */
export function answersArePositiveErrno(vmType: number | undefined): boolean {
  return vmType === VM_TYPES.snp || vmType === VM_TYPES.tdx;
}

/** The value for run->hypercall.ret when a MAP_GPA_RANGE request of a `vmType` VM is not done. */
export function hypercallErrorAnswer(vmType: number | undefined, kind: HypercallFailureKind): number {
  if (answersArePositiveErrno(vmType)) return kind === 'rejected' ? EINVAL : EAGAIN;
  return kind === 'rejected' ? -KVM_EINVAL : -KVM_EFAULT;
}
