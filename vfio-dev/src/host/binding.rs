//! Handing devices to vfio-pci and back: `viaduct bind` / `viaduct unbind`.
//!
//! Binding sets `driver_override` to vfio-pci, unbinds the device from its driver and binds it
//! to vfio-pci (falling back to `drivers_probe`), recording the driver it had in the
//! [`State`] file first. Unbinding clears `driver_override`, unbinds from vfio-pci and binds
//! the recorded driver again (or lets the kernel pick with `drivers_probe` when there is no
//! record). Nothing is loaded: vfio-pci must already be registered.
//!
//! Bridges and the device holding the root filesystem are refused unless forced. A bind works
//! on whole IOMMU groups: it reports the members that must follow for the group to be usable,
//! and with `group` binds them too. A bind that fails part way gives back what it took.

use super::inventory::PciFunction;
use super::rootdisk::root_disk_under;
use super::state::{BoundDevice, State};
use super::{HostBdf, HostError, HostPaths, SysfsWriter, VFIO_PCI};
use crate::sysfs::{is_vfio_driver, GroupMember};

/// How `bind` behaves.
#[derive(Clone, Copy, Debug, Default)]
pub struct BindOptions {
    /// Bind bridges and the root filesystem's device too.
    pub force: bool,
    /// Also bind the members of each device's IOMMU group that keep the group from being used.
    pub group: bool,
    /// The viaduct process binding for a `managed=on` VM, recorded in the state file.
    pub pid: Option<u32>,
}

/// What happened to one device in `bind`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bound {
    /// The device.
    pub bdf: HostBdf,
    /// The driver it had before.
    pub from: Option<String>,
    /// `false` when it was on vfio-pci already and was left alone.
    pub changed: bool,
    /// Whether it was added because it shares an IOMMU group with a requested device.
    pub for_group: bool,
}

/// The result of `bind`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BindReport {
    /// Every device handled, requested ones first.
    pub bound: Vec<Bound>,
    /// Group members still on a host driver, per group: the group cannot be passed through
    /// until they follow (`viaduct bind --group`).
    pub must_follow: Vec<(u32, GroupMember)>,
}

/// What the device had before viaduct bound it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Original {
    /// This driver.
    Driver(String),
    /// No driver.
    Unbound,
    /// Not recorded: the kernel picks (`drivers_probe`).
    Unknown,
}

/// What happened to one device in `unbind`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unbound {
    /// The device.
    pub bdf: HostBdf,
    /// What it should go back to.
    pub original: Original,
    /// The driver it is on now.
    pub now: Option<String>,
    /// `false` when it was not on vfio-pci and not recorded, and so was left alone.
    pub changed: bool,
}

impl Unbound {
    /// Whether it ended up where it came from.
    pub fn restored(&self) -> bool {
        match &self.original {
            Original::Driver(d) => self.now.as_deref() == Some(d),
            Original::Unbound => self.now.is_none(),
            Original::Unknown => true,
        }
    }
}

/// The result of `unbind`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnbindReport {
    /// Every device handled.
    pub devices: Vec<Unbound>,
    /// Members of the same groups that viaduct bound and that stay on vfio-pci.
    pub group_still_bound: Vec<String>,
}

fn write(
    w: &dyn SysfsWriter,
    file: std::path::PathBuf,
    value: &str,
    device: &HostBdf,
    action: String,
) -> Result<(), HostError> {
    w.write(&file, value).map_err(|error| HostError::Write {
        action,
        device: device.to_string(),
        file,
        value: value.to_string(),
        error,
    })
}

/// Refuses a bridge or the root filesystem's device, unless `force`.
pub fn check_bindable(paths: &HostPaths, f: &PciFunction, force: bool) -> Result<(), HostError> {
    if force {
        return Ok(());
    }
    if f.is_bridge() {
        return Err(HostError::IsBridge {
            bdf: f.bdf.to_string(),
            class: f.class,
        });
    }
    if let Some(disk) = root_disk_under(paths, &f.path) {
        return Err(HostError::HoldsRootFs {
            bdf: f.bdf.to_string(),
            disk: disk.name,
        });
    }
    Ok(())
}

/// The driver `bdf` is bound to now.
fn current_driver(paths: &HostPaths, bdf: &HostBdf) -> Result<Option<String>, HostError> {
    Ok(crate::sysfs::link_basename(
        bdf.as_str(),
        &paths.pci_device(bdf).join("driver"),
    )?)
}

/// Moves one device from its driver to vfio-pci.
fn bind_one(paths: &HostPaths, w: &dyn SysfsWriter, f: &PciFunction) -> Result<(), HostError> {
    let bdf = &f.bdf;
    let dev = paths.pci_device(bdf);
    write(
        w,
        dev.join("driver_override"),
        VFIO_PCI,
        bdf,
        "set driver_override of".into(),
    )?;
    if let Some(d) = f.driver.as_deref() {
        write(
            w,
            paths.pci_driver(d).join("unbind"),
            bdf.as_str(),
            bdf,
            format!("unbind from {d}"),
        )?;
    }
    let bind = write(
        w,
        paths.pci_driver(VFIO_PCI).join("bind"),
        bdf.as_str(),
        bdf,
        "bind to vfio-pci".into(),
    );
    if let Err(e) = bind {
        // The kernel may already have probed it through the override; otherwise ask it to.
        if current_driver(paths, bdf)?.is_none() {
            write(
                w,
                paths.sys.join("bus/pci/drivers_probe"),
                bdf.as_str(),
                bdf,
                "probe drivers for".into(),
            )
            .map_err(|_| e)?;
        }
    }
    let now = current_driver(paths, bdf)?;
    if now.as_deref() != Some(VFIO_PCI) {
        return Err(HostError::BindDidNotTake {
            bdf: bdf.to_string(),
            wanted: VFIO_PCI.into(),
            now,
        });
    }
    Ok(())
}

/// Gives one device back: clears `driver_override`, leaves vfio-pci, binds `original`.
pub fn restore_one(
    paths: &HostPaths,
    w: &dyn SysfsWriter,
    bdf: &HostBdf,
    original: &Original,
) -> Result<Option<String>, HostError> {
    let dev = paths.pci_device(bdf);
    write(
        w,
        dev.join("driver_override"),
        "\n",
        bdf,
        "clear driver_override of".into(),
    )?;
    let wanted = match original {
        Original::Driver(d) => Some(d.as_str()),
        _ => None,
    };
    if let Some(cur) = current_driver(paths, bdf)? {
        if Some(cur.as_str()) == wanted {
            return Ok(Some(cur));
        }
        write(
            w,
            paths.pci_driver(&cur).join("unbind"),
            bdf.as_str(),
            bdf,
            format!("unbind from {cur}"),
        )?;
    }
    let probe = |w: &dyn SysfsWriter| {
        write(
            w,
            paths.sys.join("bus/pci/drivers_probe"),
            bdf.as_str(),
            bdf,
            "probe drivers for".into(),
        )
    };
    match original {
        Original::Driver(d) if paths.pci_driver(d).is_dir() => {
            let bind = write(
                w,
                paths.pci_driver(d).join("bind"),
                bdf.as_str(),
                bdf,
                format!("bind to {d}"),
            );
            if bind.is_err() && current_driver(paths, bdf)?.is_none() {
                probe(w)?;
            }
        }
        Original::Driver(_) | Original::Unknown => probe(w)?,
        Original::Unbound => {}
    }
    current_driver(paths, bdf)
}

/// Hands `bdfs` (and, with `opts.group`, their group mates that block) to vfio-pci.
pub fn bind(
    paths: &HostPaths,
    w: &dyn SysfsWriter,
    bdfs: &[HostBdf],
    opts: BindOptions,
) -> Result<BindReport, HostError> {
    if !paths.pci_driver(VFIO_PCI).is_dir() {
        return Err(HostError::VfioPciNotLoaded);
    }
    let mut targets: Vec<(PciFunction, bool)> = Vec::new();
    for bdf in bdfs {
        if targets.iter().any(|(t, _)| &t.bdf == bdf) {
            continue;
        }
        let f = PciFunction::read(paths, bdf)?;
        check_bindable(paths, &f, opts.force)?;
        targets.push((f, false));
    }
    if opts.group {
        let mates: Vec<HostBdf> = targets
            .iter()
            .flat_map(|(t, _)| t.blocking_members())
            .filter_map(|m| m.name.parse().ok())
            .collect();
        for bdf in mates {
            if targets.iter().any(|(t, _)| t.bdf == bdf) {
                continue;
            }
            let f = PciFunction::read(paths, &bdf)?;
            check_bindable(paths, &f, opts.force)?;
            targets.push((f, true));
        }
    }

    let mut state = State::load(&paths.state_file)?;
    let mut report = BindReport::default();
    for (f, for_group) in &targets {
        let changed = !f.driver.as_deref().is_some_and(is_vfio_driver);
        if changed {
            state.record(BoundDevice {
                bdf: f.bdf.to_string(),
                driver: f.driver.clone(),
                pid: opts.pid,
            });
            state.save(&paths.state_file)?;
            if let Err(e) = bind_one(paths, w, f) {
                let original = f.driver.clone().map_or(Original::Unbound, Original::Driver);
                let _ = restore_one(paths, w, &f.bdf, &original);
                state.forget(f.bdf.as_str());
                let done: Vec<&Bound> = report.bound.iter().filter(|b| b.changed).collect();
                for b in done {
                    let original = b.from.clone().map_or(Original::Unbound, Original::Driver);
                    let _ = restore_one(paths, w, &b.bdf, &original);
                    state.forget(b.bdf.as_str());
                }
                let _ = state.save(&paths.state_file);
                return Err(e);
            }
        }
        report.bound.push(Bound {
            bdf: f.bdf.clone(),
            from: f.driver.clone(),
            changed,
            for_group: *for_group,
        });
    }

    let mut groups: Vec<u32> = targets.iter().filter_map(|(t, _)| t.group).collect();
    groups.sort_unstable();
    groups.dedup();
    for g in groups {
        for m in crate::sysfs::group_members(&paths.sys, g)? {
            if m.blocks() {
                report.must_follow.push((g, m));
            }
        }
    }
    Ok(report)
}

/// Gives `bdfs` back to the drivers recorded when viaduct bound them (with `group`, also the
/// recorded members of their IOMMU groups).
pub fn unbind(
    paths: &HostPaths,
    w: &dyn SysfsWriter,
    bdfs: &[HostBdf],
    group: bool,
) -> Result<UnbindReport, HostError> {
    let mut state = State::load(&paths.state_file)?;
    let mut targets: Vec<PciFunction> = Vec::new();
    for bdf in bdfs {
        if !targets.iter().any(|t| &t.bdf == bdf) {
            targets.push(PciFunction::read(paths, bdf)?);
        }
    }
    let mates: Vec<HostBdf> = targets
        .iter()
        .flat_map(|t| t.others_in_group())
        .filter(|m| state.get(&m.name).is_some())
        .filter_map(|m| m.name.parse().ok())
        .collect();
    let mut report = UnbindReport::default();
    for bdf in mates {
        if targets.iter().any(|t| t.bdf == bdf) {
            continue;
        }
        if group {
            targets.push(PciFunction::read(paths, &bdf)?);
        } else {
            report.group_still_bound.push(bdf.to_string());
        }
    }
    for f in &targets {
        let record = state.get(f.bdf.as_str()).cloned();
        let on_vfio = f.driver.as_deref().is_some_and(is_vfio_driver);
        let original = match &record {
            Some(r) => r.driver.clone().map_or(Original::Unbound, Original::Driver),
            None => Original::Unknown,
        };
        if record.is_none() && !on_vfio {
            report.devices.push(Unbound {
                bdf: f.bdf.clone(),
                original,
                now: f.driver.clone(),
                changed: false,
            });
            continue;
        }
        let now = restore_one(paths, w, &f.bdf, &original)?;
        state.forget(f.bdf.as_str());
        state.save(&paths.state_file)?;
        report.devices.push(Unbound {
            bdf: f.bdf.clone(),
            original,
            now,
            changed: true,
        });
    }
    Ok(report)
}

#[cfg(test)]
#[path = "binding_tests.rs"]
mod tests;
