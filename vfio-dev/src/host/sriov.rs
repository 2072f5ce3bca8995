//! `viaduct sriov BDF --numvfs N`: a checked write to `sriov_numvfs`.
//!
//! The kernel refuses to change a non-zero number of VFs to another non-zero number (EBUSY), so
//! a change from M to N writes 0 first. Its errors become sentences: ERANGE or EINVAL for more
//! VFs than `sriov_totalvfs`, ENOMEM/ENOSPC (or ERANGE within the total) when the VFs' bus
//! numbers or BARs do not fit behind the PF, ENOENT when the PF's driver cannot do SR-IOV.

use std::io;

use super::inventory::PciFunction;
use super::{HostBdf, HostError, HostPaths, SysfsWriter};

/// The change `set_numvfs` made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SriovChange {
    /// VFs before.
    pub before: u32,
    /// VFs now.
    pub after: u32,
    /// `sriov_totalvfs`.
    pub total: u32,
}

/// Turns the kernel's answer to writing `n` into `sriov_numvfs` into a sentence.
fn map_error(
    f: &PciFunction,
    n: u32,
    total: u32,
    file: std::path::PathBuf,
    e: io::Error,
) -> HostError {
    let bdf = f.bdf.to_string();
    match e.raw_os_error() {
        Some(libc::EINVAL) if n > total => HostError::TooManyVfs {
            bdf,
            requested: n,
            total,
        },
        Some(libc::ERANGE) if n > total => HostError::TooManyVfs {
            bdf,
            requested: n,
            total,
        },
        Some(libc::ERANGE) | Some(libc::ENOSPC) | Some(libc::ENOMEM) => {
            HostError::SriovBusRange { bdf, requested: n }
        }
        Some(libc::ENOENT) | Some(libc::ENOSYS) => HostError::SriovNoDriver {
            bdf,
            driver: f.driver.clone(),
        },
        _ => HostError::Write {
            action: format!("set the number of VFs to {n} on"),
            device: bdf,
            file,
            value: n.to_string(),
            error: e,
        },
    }
}

/// Sets the number of VFs of PF `bdf` to `n` (0 removes them all).
pub fn set_numvfs(
    paths: &HostPaths,
    w: &dyn SysfsWriter,
    bdf: &HostBdf,
    n: u32,
) -> Result<SriovChange, HostError> {
    let f = PciFunction::read(paths, bdf)?;
    let Some(sriov) = &f.sriov else {
        return Err(HostError::NotSriov {
            bdf: bdf.to_string(),
            hint: f
                .physfn
                .as_deref()
                .map(|pf| format!("; it is itself a VF of {pf}: give the PF {pf}"))
                .unwrap_or_default(),
        });
    };
    let total = sriov.total_vfs;
    if n > total {
        return Err(HostError::TooManyVfs {
            bdf: bdf.to_string(),
            requested: n,
            total,
        });
    }
    let before = sriov.num_vfs;
    let file = paths.pci_device(bdf).join("sriov_numvfs");
    if before != n {
        if before != 0 && n != 0 {
            w.write(&file, "0")
                .map_err(|e| map_error(&f, 0, total, file.clone(), e))?;
        }
        w.write(&file, &n.to_string())
            .map_err(|e| map_error(&f, n, total, file.clone(), e))?;
    }
    let after = super::read_u32(&file).unwrap_or(n);
    Ok(SriovChange {
        before,
        after,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fixture::*;

    fn nic() -> Fixture {
        let f = Fixture::new();
        f.pci("0000:02:00.0", NIC_PF, Some("igb"), Some(13));
        f.sriov("0000:02:00.0", 8, &["0000:02:10.0", "0000:02:10.4"], 20);
        f
    }

    fn pf() -> HostBdf {
        Fixture::bdf("0000:02:00.0")
    }

    #[test]
    fn changing_a_nonzero_count_writes_zero_first() {
        let f = nic();
        let k = KernelSim::new(&f);
        let c = set_numvfs(&f.paths, &k, &pf(), 4).unwrap();
        assert_eq!(
            c,
            SriovChange {
                before: 2,
                after: 4,
                total: 8
            }
        );
        assert_eq!(
            k.log(),
            [
                "bus/pci/devices/0000:02:00.0/sriov_numvfs=0",
                "bus/pci/devices/0000:02:00.0/sriov_numvfs=4"
            ]
        );
        // 0 removes them with one write; from 0, one write enables.
        let k = KernelSim::new(&f);
        set_numvfs(&f.paths, &k, &pf(), 0).unwrap();
        set_numvfs(&f.paths, &k, &pf(), 3).unwrap();
        assert_eq!(
            k.log(),
            [
                "bus/pci/devices/0000:02:00.0/sriov_numvfs=0",
                "bus/pci/devices/0000:02:00.0/sriov_numvfs=3"
            ]
        );
        // The same count again writes nothing.
        let k = KernelSim::new(&f);
        set_numvfs(&f.paths, &k, &pf(), 3).unwrap();
        assert!(k.log().is_empty());
    }

    #[test]
    fn more_than_totalvfs_is_refused_before_writing() {
        let f = nic();
        let k = KernelSim::new(&f);
        let msg = set_numvfs(&f.paths, &k, &pf(), 9).unwrap_err().to_string();
        assert_eq!(
            msg,
            "0000:02:00.0 offers at most 8 VFs (sriov_totalvfs); cannot enable 9"
        );
        assert!(k.log().is_empty());
    }

    #[test]
    fn kernel_errors_become_sentences() {
        let f = Fixture::new();
        f.pci("0000:02:00.0", NIC_PF, Some("igb"), Some(13));
        f.sriov("0000:02:00.0", 8, &[], 20);
        let k = KernelSim::new(&f);
        for errno in [libc::ENOMEM, libc::ERANGE, libc::ENOSPC] {
            k.fail_next("sriov_numvfs", errno);
            let msg = set_numvfs(&f.paths, &k, &pf(), 4).unwrap_err().to_string();
            assert_eq!(
                msg,
                "bus number out of range: the bus of 0000:02:00.0 cannot take 4 VFs (the host \
                 needs `pci=assign-busses` or firmware support; if dmesg says the VF BARs did \
                 not fit, `pci=realloc`)",
                "errno {errno}"
            );
        }
        k.fail_next("sriov_numvfs", libc::ENOENT);
        let msg = set_numvfs(&f.paths, &k, &pf(), 4).unwrap_err().to_string();
        assert!(
            msg.contains("its driver igb does not support SR-IOV configuration"),
            "{msg}"
        );
        k.fail_next("sriov_numvfs", libc::EACCES);
        let msg = set_numvfs(&f.paths, &k, &pf(), 4).unwrap_err().to_string();
        assert!(msg.contains("run viaduct as root"), "{msg}");
        // Nothing was enabled by the failed attempts; a clean one goes through.
        assert_eq!(set_numvfs(&f.paths, &k, &pf(), 4).unwrap().after, 4);
    }

    #[test]
    fn bus_range_error_names_the_count_asked_for() {
        let f = Fixture::new();
        f.pci("0000:02:00.0", NIC_PF, Some("igb"), Some(13));
        f.sriov("0000:02:00.0", 64, &[], 20);
        let k = KernelSim::new(&f);
        k.fail_next("sriov_numvfs", libc::ERANGE);
        let msg = set_numvfs(&f.paths, &k, &pf(), 64).unwrap_err().to_string();
        assert!(
            msg.starts_with("bus number out of range: the bus of 0000:02:00.0 cannot take 64 VFs"),
            "{msg}"
        );
    }

    #[test]
    fn device_without_sriov_and_a_vf_are_refused() {
        let f = nic();
        f.pci("0000:00:10.0", NVME, Some("nvme"), Some(1));
        let k = KernelSim::new(&f);
        let msg = set_numvfs(&f.paths, &k, &Fixture::bdf("0000:00:10.0"), 2)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("has no SR-IOV capability"), "{msg}");
        let msg = set_numvfs(&f.paths, &k, &Fixture::bdf("0000:02:10.0"), 2)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("it is itself a VF of 0000:02:00.0"), "{msg}");
    }
}
