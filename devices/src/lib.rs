//! Emulated devices of a viaduct guest (16550 serial, ACPI power management, the i8042 reset
//! line, pvpanic) and the port/MMIO bus that dispatches vCPU exits to them.
//!
//! Devices know nothing about KVM: they see reads and writes at offsets, raise interrupts through
//! `EventFd`s and report guest-requested exits through an [`exit::ExitNotifier`].

pub mod bus;
pub mod exit;
