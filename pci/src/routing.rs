//! How a PCI device's MSI/MSI-X interrupts reach the guest: each vector is an eventfd
//! that VFIO signals and KVM injects through an irqfd bound to a GSI whose route carries the
//! vector's MSI message. The VMM owns the GSI space and the routing table; devices ask for routes
//! through this trait.

use vmm_sys_util::eventfd::EventFd;

/// A GSI (global system interrupt number) in KVM's routing table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gsi(pub u32);

/// Why a route could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("interrupt routing ({what}) failed: {detail}")]
pub struct RoutingError {
    /// What was attempted.
    pub what: String,
    /// The underlying error.
    pub detail: String,
}

/// The VMM side of interrupt delivery for passthrough devices.
pub trait InterruptRouter: Send + Sync {
    /// Reserves a GSI for an MSI route.
    fn allocate_gsi(&self) -> Result<Gsi, RoutingError>;
    /// Returns a GSI allocated with [`InterruptRouter::allocate_gsi`] (its route and irqfd must
    /// already be gone).
    fn free_gsi(&self, gsi: Gsi);
    /// Sets (or replaces) `gsi`'s route to deliver the MSI message `address`/`data`.
    fn set_msi_route(&self, gsi: Gsi, address: u64, data: u32) -> Result<(), RoutingError>;
    /// Removes `gsi`'s route.
    fn remove_route(&self, gsi: Gsi) -> Result<(), RoutingError>;
    /// Makes a signal on `event` inject `gsi` (KVM_IRQFD assign).
    fn attach_irqfd(&self, event: &EventFd, gsi: Gsi) -> Result<(), RoutingError>;
    /// Stops `event` injecting `gsi` (KVM_IRQFD deassign).
    fn detach_irqfd(&self, event: &EventFd, gsi: Gsi) -> Result<(), RoutingError>;
    /// Makes a signal on `event` assert the legacy interrupt `gsi` (an IOAPIC pin), level
    /// triggered: `resample` is signalled when the guest EOIs it (KVM_IRQFD with resample).
    fn attach_level_irqfd(
        &self,
        event: &EventFd,
        resample: &EventFd,
        gsi: Gsi,
    ) -> Result<(), RoutingError>;
    /// Undoes [`InterruptRouter::attach_level_irqfd`].
    fn detach_level_irqfd(&self, event: &EventFd, gsi: Gsi) -> Result<(), RoutingError>;
}
