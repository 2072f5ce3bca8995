//! PCI device passthrough on VFIO: opening a host device through its IOMMU group and the VFIO
//! container, mapping guest RAM for its DMA, and presenting it to the guest as a PCI device with
//! virtualized BARs, MSI/MSI-X and config space while its BARs are mapped straight into the guest.
//!
//! The passthrough logic talks to the host device through [`access::VfioDeviceAccess`] and to
//! the interrupt controller through [`routing::InterruptRouter`], so it is unit-tested against
//! fakes; the real implementations are `vfio_ioctls::VfioDevice` and the VMM's KVM GSI routing.
//! This crate knows nothing about the VMM's buses or memory slots: it says which BAR areas may be
//! mapped and handles the accesses that trap.

// Tests may unwrap: a panic there is a failed test, not a dead VMM.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod access;
mod bars;
pub mod clique;
mod config;
pub mod container;
pub mod device;
pub mod dma;
pub mod error;
// The fuzz targets (tests/fuzz, feature `fuzzing`) drive passthrough on the same fake.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fake;
pub mod host;
mod interrupts;
pub mod iommu_info;
pub mod peer;
pub mod routing;
pub mod sparse;
pub mod sysfs;
