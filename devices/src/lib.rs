//! Emulated devices of a viaduct guest (16550 serial, ACPI power management, the ACPI Generic
//! Event Device and PCI hotplug controller, the i8042 reset line, pvpanic, virtio-blk over the
//! modern virtio-pci transport) and the port/MMIO bus that dispatches vCPU exits to them.
//!
//! Devices know nothing about KVM: they see reads and writes at offsets relative to where the
//! VMM mapped them, raise interrupts through `EventFd`s and report guest-requested exits
//! through an [`exit::ExitNotifier`]. Register emulation comes from vm-superio where it has
//! one (serial, i8042); [`trigger`] adapts its `Trigger` trait to viaduct's primitives. All of
//! the legacy port devices decode single-byte accesses only (see [`byte_access`]); the MMIO
//! platform devices ([`acpi_ged`], [`pci_hotplug`]) decode 32-bit registers. The [`virtio`]
//! devices are PCI functions (`pci::device::PciDevice`); their queues are served by a worker
//! thread per device, never on a vCPU.

// Tests may unwrap: a panic there is a failed test, not a dead VMM.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod acpi_ged;
pub mod acpi_pm;
pub mod bus;
pub mod byte_access;
pub mod exit;
pub mod i8042;
pub mod log_limit;
pub mod pci_hotplug;
pub mod pvpanic;
pub mod serial;
pub mod thread_hook;
pub mod trigger;
pub mod virtio;
