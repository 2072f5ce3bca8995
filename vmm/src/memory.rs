//! Guest RAM: anonymous host mappings laid out by `arch::memory`, registered as KVM memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::Error;

/// The guest's RAM.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Maps `memory_bytes` of RAM at the addresses `arch::memory::ram_regions` gives.
pub fn create_guest_memory(memory_bytes: u64) -> Result<GuestMemoryMmap, Error> {
    let ranges: Vec<(GuestAddress, usize)> = arch::memory::ram_regions(memory_bytes)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| Error::GuestMemory {
        bytes: memory_bytes,
        source,
    })
}

/// Tells KVM about every RAM region, one slot each.
pub fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), Error> {
    for (slot, region) in mem.iter().enumerate() {
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the host range is a live mapping owned by `mem`, which the caller keeps alive
        // for as long as the VM exists: `run` declares the memory before the VM, so the VM (and
        // every vCPU and device) is dropped first.
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(|e| Error::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
    }
    Ok(())
}
