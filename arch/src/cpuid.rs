//! Per-vCPU CPUID: KVM's supported CPUID, patched with each vCPU's APIC ID and a topology that
//! says "one package, N cores, one thread per core", plus the hypervisor bit.

use kvm_bindings::kvm_cpuid_entry2;

/// Leaf 1 ECX bit 31: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: the package has more than one logical processor.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 0x8000_0001 ECX bit 1: CmpLegacy (AMD multi-core).
const EXT1_ECX_CMP_LEGACY: u32 = 1 << 1;
/// Extended topology level types (leaf 0xB/0x1F ECX[15:8]).
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Where one vCPU sits in the guest's topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuTopology {
    /// This vCPU's index, which is also its (x)APIC ID.
    pub apic_id: u8,
    /// Number of vCPUs in the VM (all cores of one package).
    pub count: u8,
}

/// Bits needed to number `count` cores (the APIC ID shift for the core level).
pub fn core_id_bits(count: u8) -> u32 {
    (u32::from(count.max(1)) - 1)
        .checked_ilog2()
        .map_or(0, |b| b + 1)
}

/// Patches `entries` (a copy of `KVM_GET_SUPPORTED_CPUID`) for the vCPU at `topo`.
pub fn patch_cpuid(entries: &mut [kvm_cpuid_entry2], topo: VcpuTopology) {
    let apic_id = u32::from(topo.apic_id);
    let count = u32::from(topo.count.max(1));
    let shift = core_id_bits(topo.count);
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                e.ebx = (apic_id << 24) | (count << 16) | (e.ebx & 0xffff);
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 => {
                // Cores per package - 1 in EAX[31:26]; caches are per core except the last level.
                let cache_level = (e.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3ff) | ((count - 1) << 26) | (sharing << 14);
            }
            0xb | 0x1f => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = shift;
                        e.ebx = count;
                        e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0x8000_0001 => {
                if count > 1 {
                    e.ecx |= EXT1_ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !EXT1_ECX_CMP_LEGACY;
                }
            }
            0x8000_0008 => {
                // NC = cores - 1 in ECX[7:0], ApicIdSize in ECX[15:12].
                e.ecx = (e.ecx & !0xf0ff) | (shift << 12) | (count - 1);
            }
            0x8000_001e => {
                e.eax = apic_id;
                e.ebx = apic_id & 0xff; // compute unit id = core id, one thread per unit
                e.ecx = 0; // node 0, one node per package
            }
            _ => {}
        }
    }
}

/// The host's physical address width as KVM reports it (leaf 0x8000_0008 EAX[7:0]); 0 when
/// the leaf is missing.
pub fn reported_phys_bits(entries: &[kvm_cpuid_entry2]) -> u8 {
    entries
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map_or(0, |e| (e.eax & 0xff) as u8)
}

/// Tells the guest its physical address width is `phys_bits` (leaf 0x8000_0008 EAX[7:0]), the
/// width the MMIO apertures were sized for; the guest-physical width field (EAX[23:16]) is
/// cleared so it defaults to the same value.
pub fn set_phys_bits(entries: &mut [kvm_cpuid_entry2], phys_bits: u8) {
    for e in entries.iter_mut().filter(|e| e.function == 0x8000_0008) {
        e.eax = (e.eax & !0x00ff_00ff) | u32::from(phys_bits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    fn sample() -> Vec<kvm_cpuid_entry2> {
        let mut l1 = leaf(1, 0);
        l1.ebx = 0xff08_0800; // host APIC id 0xff, clflush 8
        l1.edx = LEAF1_EDX_HTT;
        let mut l4 = leaf(4, 3);
        l4.eax = (3 << 5) | 0x3;
        vec![
            l1,
            l4,
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xb, 2),
            leaf(0x8000_0008, 0),
            leaf(0x8000_001e, 0),
        ]
    }

    #[test]
    fn core_id_bits_rounds_up_to_a_power_of_two() {
        assert_eq!(
            [1, 2, 3, 4, 5, 8, 9, 254].map(core_id_bits),
            [0, 1, 2, 2, 3, 3, 4, 8]
        );
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = sample();
        patch_cpuid(
            &mut e,
            VcpuTopology {
                apic_id: 3,
                count: 4,
            },
        );
        let l1 = find(&e, 1, 0);
        assert_eq!(l1.ebx, 0x0304_0800);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn single_vcpu_clears_htt() {
        let mut e = sample();
        patch_cpuid(
            &mut e,
            VcpuTopology {
                apic_id: 0,
                count: 1,
            },
        );
        assert_eq!(find(&e, 1, 0).edx & LEAF1_EDX_HTT, 0);
        assert_eq!(find(&e, 0x8000_0008, 0).ecx & 0xff, 0);
    }

    #[test]
    fn extended_topology_describes_n_cores_one_thread_each() {
        let mut e = sample();
        patch_cpuid(
            &mut e,
            VcpuTopology {
                apic_id: 2,
                count: 3,
            },
        );
        let smt = find(&e, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        let core = find(&e, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
        let end = find(&e, 0xb, 2);
        assert_eq!((end.ebx, end.ecx >> 8), (0, 0));
        assert_eq!(find(&e, 4, 3).eax >> 26, 2);
        assert_eq!(find(&e, 0x8000_0008, 0).ecx & 0xf0ff, 0x2002);
        assert_eq!(find(&e, 0x8000_001e, 0).eax, 2);
    }

    #[test]
    fn phys_bits_are_read_and_overridden() {
        let mut e = sample();
        e[5].eax = 0x0030_3028; // 40 bits, guest width 48
        assert_eq!(reported_phys_bits(&e), 0x28);
        set_phys_bits(&mut e, 39);
        assert_eq!(find(&e, 0x8000_0008, 0).eax, 0x0000_3027);
        assert_eq!(reported_phys_bits(&[]), 0);
    }
}
