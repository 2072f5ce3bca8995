//! What the device manager changes in the guest's address space besides the MMIO/port buses:
//! KVM memory slots that map host memory (a passthrough BAR's mmap) straight into the guest,
//! and KVM ioeventfds that turn a doorbell write into an eventfd signal. Behind the
//! [`GuestMappings`] trait, so the attach/detach pipeline is unit-tested without KVM.

use std::sync::Mutex;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

/// The guest's address space as the device manager changes it.
pub trait GuestMappings: Send + Sync {
    /// Maps `size` bytes of host memory at `host` into the guest at `gpa` as memory slot `slot`
    /// (replacing what the slot mapped before).
    ///
    /// # Safety
    /// `host..host + size` must stay mapped in this process until the slot is cleared with
    /// [`GuestMappings::clear_memory_slot`].
    unsafe fn set_memory_slot(
        &self,
        slot: u32,
        gpa: u64,
        size: u64,
        host: usize,
    ) -> Result<(), kvm_ioctls::Error>;
    /// Removes memory slot `slot`; the host memory may then be unmapped.
    fn clear_memory_slot(&self, slot: u32) -> Result<(), kvm_ioctls::Error>;
    /// Makes a guest write (any width) at MMIO address `addr` signal `event`.
    fn register_doorbell(&self, event: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error>;
    /// Undoes [`GuestMappings::register_doorbell`].
    fn unregister_doorbell(&self, event: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error>;
}

impl GuestMappings for VmFd {
    unsafe fn set_memory_slot(
        &self,
        slot: u32,
        gpa: u64,
        size: u64,
        host: usize,
    ) -> Result<(), kvm_ioctls::Error> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host as u64,
        };
        // SAFETY: the caller guarantees the host range stays mapped until the slot is cleared.
        unsafe { self.set_user_memory_region(region) }
    }

    fn clear_memory_slot(&self, slot: u32) -> Result<(), kvm_ioctls::Error> {
        let region = kvm_userspace_memory_region {
            slot,
            ..Default::default()
        };
        // SAFETY: a zero-sized region deletes the slot; no host memory is referenced.
        unsafe { self.set_user_memory_region(region) }
    }

    fn register_doorbell(&self, event: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error> {
        self.register_ioevent(event, &IoEventAddress::Mmio(addr), NoDatamatch)
    }

    fn unregister_doorbell(&self, event: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error> {
        self.unregister_ioevent(event, &IoEventAddress::Mmio(addr), NoDatamatch)
    }
}

/// Hands out KVM memory slot numbers above the RAM slots, and takes them back on detach.
pub struct SlotAllocator {
    state: Mutex<SlotState>,
}

struct SlotState {
    next: u32,
    free: Vec<u32>,
}

impl SlotAllocator {
    /// Slots from `first` on (RAM uses `0..first`).
    pub fn new(first: u32) -> Self {
        Self {
            state: Mutex::new(SlotState {
                next: first,
                free: Vec::new(),
            }),
        }
    }

    /// The lowest slot number not in use.
    pub fn take(&self) -> u32 {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = s.free.pop() {
            return slot;
        }
        s.next += 1;
        s.next - 1
    }

    /// Returns `slot` for reuse.
    pub fn give_back(&self, slot: u32) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.free.push(slot);
        // Lowest first, so a re-attach gets the slots it had.
        s.free.sort_unstable_by(|a, b| b.cmp(a));
    }

    /// Slots currently handed out (for tests and leak checks).
    pub fn in_use(&self, first: u32) -> u32 {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.next - first - s.free.len() as u32
    }
}

/// A shared mapping of host memory (a region of a VFIO device fd) that a memory slot shows to
/// the guest. Unmapped when dropped, which the device manager does only after clearing every
/// slot that points into it.
pub struct HostMapping {
    addr: usize,
    size: u64,
}

impl HostMapping {
    /// Maps `size` bytes of `fd` at `offset`, shared, readable and/or writable.
    pub fn map_fd(
        fd: i32,
        offset: u64,
        size: u64,
        read: bool,
        write: bool,
    ) -> std::io::Result<Self> {
        let mut prot = 0;
        if read {
            prot |= libc::PROT_READ;
        }
        if write {
            prot |= libc::PROT_WRITE;
        }
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: a fresh shared mapping chosen by the kernel; it validates fd, offset and size.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                prot,
                libc::MAP_SHARED,
                fd,
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            addr: addr as usize,
            size,
        })
    }

    /// Anonymous read/write memory: a stand-in for device memory in tests.
    pub fn anonymous(size: u64) -> std::io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping chosen by the kernel.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            addr: addr as usize,
            size,
        })
    }

    /// A mapping of nothing, left behind when a real one must be leaked (a memory slot that
    /// could not be removed may still point at it).
    pub fn empty() -> Self {
        Self { addr: 0, size: 0 }
    }

    /// Host address of the first byte.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        if self.size == 0 {
            return;
        }
        // SAFETY: `addr` was returned by mmap for `size` bytes; the device manager clears every
        // memory slot into it before dropping it, so nothing refers to it any more.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.size as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_lowest_first() {
        let slots = SlotAllocator::new(2);
        let (a, b, c) = (slots.take(), slots.take(), slots.take());
        assert_eq!((a, b, c), (2, 3, 4));
        assert_eq!(slots.in_use(2), 3);
        slots.give_back(c);
        slots.give_back(a);
        assert_eq!(slots.take(), 2);
        assert_eq!(slots.take(), 4);
        assert_eq!(slots.take(), 5);
        assert_eq!(slots.in_use(2), 4);
    }
}
