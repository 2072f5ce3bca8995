//! Running the VM: binds the `managed=on` devices to vfio-pci, calls [`vmm::run`], gives the
//! devices back, and maps the outcome to an exit status (0 for a guest power-off or reboot
//! request, 1 when the VM fails).
//!
//! The devices are held by a [`ManagedDevices`] guard, so they are given back on every way out
//! of `vmm::run`: a power-off, a guest crash, SIGTERM (which the VMM turns into an error
//! return), a VMM error, and a panic that unwinds through here. The termination handlers are
//! installed before the devices are bound, so a SIGTERM while they are being bound stops the
//! VM before it is built and still gives them back. Only a SIGKILL skips that; the state file
//! then still names them for `viaduct unbind`.

use std::path::Path;
use std::process::ExitCode;

use vfio_dev::host::managed::ManagedDevices;
use vfio_dev::host::{HostPaths, KernelWriter};
use vmm::config::VmConfig;

use crate::error_chain;

/// Runs the VM described by `config` and returns viaduct's exit status.
pub fn run(config: VmConfig) -> ExitCode {
    if let Err(e) = vmm::signals::install() {
        eprintln!("viaduct: error: {}", error_chain(&e));
        return ExitCode::FAILURE;
    }
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

    let outcome = match vmm::signals::received() {
        Some(name) => Err(vmm::Error::Signal(name)),
        None => vmm::run(config),
    };

    let mut restored = true;
    if let Some(g) = guard.as_mut() {
        let held = open_vfio_fds(Path::new("/proc/self/fd"));
        if held.is_empty() {
            for r in g.release() {
                restored &= r.ok();
            }
        } else {
            // Unbinding a device whose VFIO fd is still open blocks in the kernel until the fd
            // closes, which would be never: this process holds it. Leave the devices bound (they
            // are in the state file) and say how to give them back once viaduct has exited.
            eprintln!(
                "viaduct: error: viaduct still holds {} VFIO file descriptor(s) ({}), so the \
                 managed devices stay on vfio-pci; give them back with `viaduct unbind BDF` \
                 after viaduct has exited",
                held.len(),
                held.join(", ")
            );
            std::mem::forget(guard.take());
            restored = false;
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

/// The VFIO files among this process's open descriptors (group files `/dev/vfio/N` and device
/// fds `anon_inode:[vfio-device]`), read from the `fd` directory `dir` of `/proc/<pid>`.
fn open_vfio_fds(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut held: Vec<String> = entries
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|t| is_vfio_file(t))
        .collect();
    held.sort();
    held
}

/// Whether an fd link target names a VFIO group, the container or a VFIO device.
fn is_vfio_file(target: &str) -> bool {
    (target.starts_with("/dev/vfio/") && target != "/dev/vfio/vfio")
        || target == "anon_inode:[vfio-device]"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vfio_group_and_device_fds_are_found_among_the_open_files() {
        let dir = std::env::temp_dir().join(format!("viaduct-fds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, target) in [
            ("0", "/dev/null"),
            ("3", "/dev/vfio/vfio"),
            ("4", "/dev/vfio/12"),
            ("5", "anon_inode:[vfio-device]"),
            ("6", "anon_inode:[eventfd]"),
        ] {
            std::os::unix::fs::symlink(target, dir.join(name)).unwrap();
        }
        assert_eq!(
            open_vfio_fds(&dir),
            ["/dev/vfio/12", "anon_inode:[vfio-device]"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(open_vfio_fds(&dir).is_empty());
        // This test process holds none.
        assert!(open_vfio_fds(Path::new("/proc/self/fd")).is_empty());
    }
}
