//! The guest-visible PCI topology of viaduct: PCI segments (one root bus each), configuration
//! space with its standard semantics (read-only bits, BAR sizing, capability lists, MSI and
//! MSI-X), the host bridge, config access through ECAM and the legacy 0xCF8/0xCFC ports, and the
//! placement of BARs inside each segment's share of the MMIO apertures.
//!
//! Pure logic only: no KVM, no VFIO, no host devices. The VMM maps the access paths onto its
//! buses; passthrough and virtio devices implement [`device::PciDevice`].

// Tests may unwrap: a panic there is a failed test, not a dead VMM.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod address;
pub mod allocator;
pub mod aperture;
pub mod bar;
pub mod capability;
pub mod config_space;
pub mod device;
pub mod error;
pub mod host_bridge;
pub mod legacy_ports;
pub mod msi;
pub mod msi_vector;
pub mod msix;
pub mod routing;
pub mod segment;
