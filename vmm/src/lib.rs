//! The viaduct VMM: creates the KVM VM and its vCPUs, guest memory, wires the devices and runs
//! the event loop until the guest powers off, reboots or fails.

pub mod config;

use config::VmConfig;

/// How a VM run ended when the guest itself asked for it to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off.
    PowerOff,
    /// The guest asked to reboot; viaduct does not restart guests in place.
    Reboot,
}

/// Why a VM could not be run to a clean end.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Placeholder until the boot path lands.
    #[error("booting is not wired up yet")]
    NotWired,
}

/// Boots the VM described by `config` and runs it until it stops.
pub fn run(config: VmConfig) -> Result<Outcome, Error> {
    let _ = config;
    Err(Error::NotWired)
}
