//! Running the VM: binds the `managed=on` devices to vfio-pci, calls [`vmm::run`], gives the
//! devices back, and maps the outcome to an exit status (0 for a guest power-off or reboot
//! request, 1 when the VM fails).
//!
//! The devices are held by a [`ManagedDevices`] guard, so they are given back on every way out
//! of `vmm::run`: a power-off, a guest crash, SIGTERM (which the VMM turns into an error
//! return), a VMM error, and a panic that unwinds through here. Only a SIGKILL (or a signal
//! before the VMM installs its handlers) skips that; the state file then still names them for
//! `viaduct unbind`.

use std::path::Path;
use std::process::ExitCode;

use vfio_dev::host::managed::ManagedDevices;
use vfio_dev::host::{HostPaths, KernelWriter};
use vmm::config::VmConfig;

use crate::error_chain;

/// Runs the VM described by `config` and returns viaduct's exit status.
pub fn run(config: VmConfig) -> ExitCode {
    let managed: Vec<&Path> = config
        .devices
        .iter()
        .filter(|d| d.managed)
        .map(|d| d.path.as_path())
        .collect();
    let mut guard = if managed.is_empty() {
        None
    } else {
        match ManagedDevices::take(HostPaths::from_env(), KernelWriter, &managed) {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!("viaduct: error: managed device: {}", error_chain(&e));
                return ExitCode::FAILURE;
            }
        }
    };

    let outcome = vmm::run(config);

    let mut restored = true;
    if let Some(g) = guard.as_mut() {
        for r in g.release() {
            restored &= r.ok();
        }
    }
    let code = match outcome {
        Ok(vmm::Outcome::PowerOff) => ExitCode::SUCCESS,
        Ok(vmm::Outcome::Reboot) => {
            eprintln!(
                "viaduct: the guest asked to reboot; viaduct does not restart guests in place, \
                 exiting"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("viaduct: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    };
    if !restored {
        eprintln!(
            "viaduct: error: not every managed device went back to its driver (see the warnings \
             above); `viaduct unbind BDF` retries"
        );
        return ExitCode::FAILURE;
    }
    code
}
