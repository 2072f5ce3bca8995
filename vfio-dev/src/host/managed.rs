//! `--device path=…,managed=on`: viaduct binds the device, and the members of its IOMMU group
//! that would keep the group from being used, to vfio-pci before the VM starts, and gives them
//! back to their drivers when the [`ManagedDevices`] guard is released or dropped — after a
//! power-off, a guest crash, SIGTERM, a VMM error or a panic that unwinds alike.
//!
//! The bindings are also in the state file (with viaduct's pid), so a viaduct that was killed
//! outright (SIGKILL) leaves a record `viaduct unbind` can restore from.

use std::path::Path;

use super::binding::{self, BindOptions, Original};
use super::state::State;
use super::{HostBdf, HostError, HostPaths, SysfsWriter};

/// Devices viaduct bound for the life of one VM.
pub struct ManagedDevices<W: SysfsWriter> {
    paths: HostPaths,
    writer: W,
    /// What each device came from, in bind order.
    bound: Vec<(HostBdf, Original)>,
}

/// How one managed device was given back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    /// The device.
    pub bdf: HostBdf,
    /// The driver it was to go back to.
    pub original: Original,
    /// The result: the driver it is on now.
    pub result: Result<Option<String>, String>,
}

impl Released {
    /// One line for the log.
    pub fn describe(&self) -> String {
        match (&self.result, &self.original) {
            (Ok(now), Original::Driver(d)) if now.as_deref() == Some(d) => {
                format!("gave {} back to {d}", self.bdf)
            }
            (Ok(None), Original::Unbound) => format!("left {} unbound, as it was", self.bdf),
            (Ok(now), _) => format!(
                "{} is now on {} (it came from {})",
                self.bdf,
                now.as_deref().unwrap_or("no driver"),
                match &self.original {
                    Original::Driver(d) => d.as_str(),
                    _ => "no driver",
                }
            ),
            (Err(e), _) => format!("could not give {} back: {e}", self.bdf),
        }
    }

    /// Whether the device is back where it came from.
    pub fn ok(&self) -> bool {
        match (&self.result, &self.original) {
            (Ok(now), Original::Driver(d)) => now.as_deref() == Some(d),
            (Ok(now), Original::Unbound) => now.is_none(),
            (Ok(_), Original::Unknown) => true,
            (Err(_), _) => false,
        }
    }
}

impl<W: SysfsWriter> ManagedDevices<W> {
    /// Binds the PCI devices at `device_paths` (sysfs directories) and what their groups need.
    pub fn take(
        paths: HostPaths,
        writer: W,
        device_paths: &[&Path],
    ) -> Result<ManagedDevices<W>, HostError> {
        let mut bdfs = Vec::new();
        for p in device_paths {
            let name = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            let bdf: HostBdf =
                name.to_string_lossy()
                    .parse()
                    .map_err(|_| HostError::ManagedNotPci {
                        path: p.to_path_buf(),
                    })?;
            bdfs.push(bdf);
        }
        let opts = BindOptions {
            force: false,
            group: true,
            pid: Some(std::process::id()),
        };
        let report = binding::bind(&paths, &writer, &bdfs, opts)?;
        let bound = report
            .bound
            .into_iter()
            .filter(|b| b.changed)
            .map(|b| {
                for_log(&b.bdf, &b.from, b.for_group);
                let original = b.from.map_or(Original::Unbound, Original::Driver);
                (b.bdf, original)
            })
            .collect();
        Ok(ManagedDevices {
            paths,
            writer,
            bound,
        })
    }

    /// The devices viaduct bound (and will give back).
    pub fn bound(&self) -> impl Iterator<Item = &HostBdf> {
        self.bound.iter().map(|(b, _)| b)
    }

    /// Gives every device back, in reverse bind order, and forgets them in the state file.
    pub fn release(&mut self) -> Vec<Released> {
        let mut out = Vec::new();
        let mut state = State::load(&self.paths.state_file).ok();
        while let Some((bdf, original)) = self.bound.pop() {
            let result = binding::restore_one(&self.paths, &self.writer, &bdf, &original)
                .map_err(|e| e.to_string());
            if let Some(s) = state.as_mut() {
                s.forget(bdf.as_str());
            }
            let r = Released {
                bdf,
                original,
                result,
            };
            if r.ok() {
                log::info!("managed device: {}", r.describe());
            } else {
                log::warn!("managed device: {}", r.describe());
            }
            out.push(r);
        }
        if let Some(s) = state {
            if let Err(e) = s.save(&self.paths.state_file) {
                log::warn!("managed devices: {e}");
            }
        }
        out
    }
}

fn for_log(bdf: &HostBdf, from: &Option<String>, for_group: bool) {
    log::info!(
        "managed device: bound {bdf} to vfio-pci (from {}){}",
        from.as_deref().unwrap_or("no driver"),
        if for_group {
            ", because it shares the IOMMU group"
        } else {
            ""
        }
    );
}

impl<W: SysfsWriter> Drop for ManagedDevices<W> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fixture::*;
    use crate::host::VFIO_PCI;

    #[test]
    fn group_is_bound_for_the_vm_and_given_back_on_drop() {
        let f = Fixture::new();
        f.driver(VFIO_PCI);
        let gpu = f.pci("0000:01:00.0", GPU, Some("nvidia"), Some(12));
        f.pci("0000:01:00.1", GPU_AUDIO, Some("snd_hda_intel"), Some(12));
        {
            let m = ManagedDevices::take(f.paths.clone(), KernelSim::new(&f), &[&gpu]).unwrap();
            let bound: Vec<&str> = m.bound().map(HostBdf::as_str).collect();
            assert_eq!(bound, ["0000:01:00.0", "0000:01:00.1"]);
            assert_eq!(f.driver_of("0000:01:00.0").as_deref(), Some("vfio-pci"));
            assert_eq!(f.driver_of("0000:01:00.1").as_deref(), Some("vfio-pci"));
            let state = State::load(&f.paths.state_file).unwrap();
            assert_eq!(state.devices.len(), 2);
            assert_eq!(state.devices[0].pid, Some(std::process::id()));
        }
        assert_eq!(f.driver_of("0000:01:00.0").as_deref(), Some("nvidia"));
        assert_eq!(
            f.driver_of("0000:01:00.1").as_deref(),
            Some("snd_hda_intel")
        );
        assert!(!f.paths.state_file.exists());
    }

    #[test]
    fn release_reports_and_runs_once_even_on_unwind() {
        let f = Fixture::new();
        f.driver(VFIO_PCI);
        let nvme = f.pci("0000:00:10.0", NVME, Some("nvme"), Some(1));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _m = ManagedDevices::take(f.paths.clone(), KernelSim::new(&f), &[&nvme]).unwrap();
            assert_eq!(f.driver_of("0000:00:10.0").as_deref(), Some("vfio-pci"));
            panic!("the VMM panicked");
        }));
        assert!(result.is_err());
        assert_eq!(f.driver_of("0000:00:10.0").as_deref(), Some("nvme"));

        let mut m = ManagedDevices::take(f.paths.clone(), KernelSim::new(&f), &[&nvme]).unwrap();
        let released = m.release();
        assert_eq!(released.len(), 1);
        assert!(released[0].ok());
        assert_eq!(released[0].describe(), "gave 0000:00:10.0 back to nvme");
        assert!(m.release().is_empty(), "a second release does nothing");
    }

    #[test]
    fn device_already_on_vfio_is_left_alone() {
        let f = Fixture::new();
        f.driver(VFIO_PCI);
        let nvme = f.pci("0000:00:10.0", NVME, Some("vfio-pci"), Some(1));
        let m = ManagedDevices::take(f.paths.clone(), KernelSim::new(&f), &[&nvme]).unwrap();
        assert_eq!(m.bound().count(), 0);
        drop(m);
        assert_eq!(f.driver_of("0000:00:10.0").as_deref(), Some("vfio-pci"));
    }

    #[test]
    fn mdev_path_is_not_managed() {
        let f = Fixture::new();
        f.driver(VFIO_PCI);
        let dir = f
            .paths
            .sys
            .join("bus/mdev/devices/c2e088c6-7fd5-4b7d-9d5b-0f8c2b3c0a11");
        std::fs::create_dir_all(&dir).unwrap();
        let err = ManagedDevices::take(f.paths.clone(), KernelSim::new(&f), &[&dir])
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("managed=on needs a PCI device"), "{err}");
    }
}
