//! Opening KVM and creating the VM: required capabilities, the in-kernel irqchip (PIC, IOAPIC,
//! LAPICs) and PIT, and the Intel-only TSS / identity-map pages.

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};

use crate::Error;
use arch::layout;

/// Capabilities viaduct cannot run without.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "in-kernel irqchip"),
    (Cap::Irqfd, "irqfd"),
    (Cap::UserMemory, "user memory regions"),
    (Cap::SetTssAddr, "KVM_SET_TSS_ADDR"),
    (Cap::Pit2, "in-kernel PIT"),
    (Cap::ExtCpuid, "KVM_GET_SUPPORTED_CPUID"),
];

/// Opens `/dev/kvm` and checks it can run a viaduct guest.
pub fn open_kvm() -> Result<Kvm, Error> {
    let kvm = Kvm::new().map_err(|e| Error::KvmOpen(e.errno()))?;
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(Error::KvmCapability(name));
        }
    }
    Ok(kvm)
}

/// Creates the VM with its interrupt controllers and timer.
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, Error> {
    let vm = kvm
        .create_vm()
        .map_err(|e| Error::Kvm("KVM_CREATE_VM", e))?;
    vm.set_tss_address(layout::KVM_TSS_START as usize)
        .map_err(|e| Error::Kvm("KVM_SET_TSS_ADDR", e))?;
    if kvm.check_extension(Cap::SetIdentityMapAddr) {
        vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_START)
            .map_err(|e| Error::Kvm("KVM_SET_IDENTITY_MAP_ADDR", e))?;
    }
    vm.create_irq_chip()
        .map_err(|e| Error::Kvm("KVM_CREATE_IRQCHIP", e))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| Error::Kvm("KVM_CREATE_PIT2", e))?;
    Ok(vm)
}
