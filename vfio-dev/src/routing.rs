//! Interrupt routing for passthrough devices: the VMM-side trait lives in the `pci` crate (virtio
//! devices use it too) and is re-exported here.

pub use pci::routing::*;
