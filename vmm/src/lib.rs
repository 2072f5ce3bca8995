//! The viaduct VMM: creates the KVM VM and its vCPUs, guest memory, wires the devices and runs
//! the event loop until the guest powers off, reboots or fails.

pub mod config;
