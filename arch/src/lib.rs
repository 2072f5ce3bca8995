//! The guest-visible x86_64 platform of viaduct: the memory map, kernel loading and the boot
//! protocols, the initial vCPU state (page tables, GDT, registers, MSRs, CPUID) and the ACPI
//! tables.
//!
//! This crate computes and writes bytes into guest memory; it never issues KVM ioctls, so all of
//! it is unit-tested without `/dev/kvm`. It must not know about devices' behaviour, only where
//! they sit.

// Tests may unwrap: a panic there is a failed test, not a dead VMM.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod memory;
pub mod regs;
