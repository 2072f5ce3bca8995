//! What the control API does to the running VM ([`VmApi`] for the real VM): hot-adding a
//! passthrough device through the device manager's one attach pipeline and telling the guest
//! (the hotplug controller's "up" bit and the GED interrupt), hot-removing one (the "down" bit;
//! the guest's `_EJ0` reports the eject; the device manager detaches it here, on the API thread,
//! never on the vCPU thread that carried the eject), stopping the VM, the power button.
//!
//! Hot-add and cold-add are one path: [`crate::passthrough::Passthrough::attach`] (the device
//! joins the VM's one container, RAM is mapped once, BARs go into the segment's free windows,
//! peer-to-peer mappings to and from the devices already there). `managed=on` binds the device
//! to vfio-pci on add and gives it back on remove.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{info, warn};

use devices::acpi_ged::{AcpiGed, GED_PCI_DEVICES_CHANGED, GED_POWER_BUTTON};
use devices::exit::{ExitNotifier, ExitReason};
use devices::pci_hotplug::PciHotplugController;
use vfio_dev::error::VfioError;
use vfio_dev::host::managed::ManagedDevices;
use vfio_dev::host::{HostPaths, KernelWriter};

use crate::api::{AddDeviceRequest, AddedDevice, ApiError, OneAtATime, VmApi};
use crate::config::{PassthroughDeviceConfig, VmConfig, MAX_GPUDIRECT_CLIQUE};
use crate::device_manager::{AttachError, AttachedInfo, BuildError};
use crate::PciDevices;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ejects the guest reported and nobody has collected yet.
#[derive(Default)]
pub struct Ejections {
    done: Mutex<BTreeSet<(u16, u8)>>,
    changed: Condvar,
}

impl Ejections {
    /// The guest ejected `slot` of `segment` (called on a vCPU thread: records and wakes).
    pub fn record(&self, segment: u16, slot: u8) {
        lock(&self.done).insert((segment, slot));
        self.changed.notify_all();
    }

    /// Waits up to `timeout` for the eject of `slot` of `segment`, and collects it.
    fn wait(&self, segment: u16, slot: u8, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut done = lock(&self.done);
        loop {
            if done.remove(&(segment, slot)) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            done = self
                .changed
                .wait_timeout(done, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The running VM as the API drives it.
pub struct VmControl {
    config: VmConfig,
    devices: Arc<PciDevices>,
    exit: ExitNotifier,
    ged: Arc<Mutex<AcpiGed>>,
    hotplug: Arc<Mutex<PciHotplugController>>,
    ejections: Arc<Ejections>,
    eject_timeout: Duration,
    busy: OneAtATime,
    /// Devices added over the API with `managed=on`, by id.
    managed: Mutex<BTreeMap<String, ManagedDevices<KernelWriter>>>,
    /// The sysfs path of every passthrough device, by id (cold- or hot-plugged).
    paths: Mutex<BTreeMap<String, PathBuf>>,
}

/// The HTTP status an attach error deserves.
fn attach_status(e: &AttachError) -> u16 {
    match e {
        AttachError::DuplicateId { .. } => 409,
        AttachError::NoSuchSegment { .. } | AttachError::BarPlacement { .. } => 400,
        AttachError::Build {
            source: BuildError::Vfio(v),
            ..
        } => match v {
            VfioError::GroupBusy { .. } => 409,
            VfioError::Setup { .. } | VfioError::Dma { .. } => 500,
            _ => 400,
        },
        AttachError::Build {
            source: BuildError::Passthrough(_),
            ..
        } => 400,
        _ => 500,
    }
}

fn bdf_string(segment: u16, bdf: pci::address::Bdf) -> String {
    format!("{segment:04x}:{bdf}")
}

impl VmControl {
    /// Control of the VM `config` describes, whose PCI devices are `devices`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: VmConfig,
        devices: Arc<PciDevices>,
        exit: ExitNotifier,
        ged: Arc<Mutex<AcpiGed>>,
        hotplug: Arc<Mutex<PciHotplugController>>,
        ejections: Arc<Ejections>,
        eject_timeout: Duration,
    ) -> Self {
        let paths = config
            .devices
            .iter()
            .map(|d| {
                let id = d.id.clone().unwrap_or_else(|| sysfs_name(&d.path));
                (id, canonical(&d.path))
            })
            .collect();
        Self {
            config,
            devices,
            exit,
            ged,
            hotplug,
            ejections,
            eject_timeout,
            busy: OneAtATime::default(),
            managed: Mutex::new(BTreeMap::new()),
            paths: Mutex::new(paths),
        }
    }

    fn find(&self, id: &str) -> Option<AttachedInfo> {
        self.devices
            .manager
            .devices()
            .into_iter()
            .find(|d| d.id == id)
    }

    fn notify_guest(&self) {
        if let Err(e) = lock(&self.ged).notify(GED_PCI_DEVICES_CHANGED) {
            warn!("cannot interrupt the guest about a PCI change: {e}");
        }
    }

    /// Gives back a device the API bound with `managed=on`.
    fn give_back(&self, id: &str) {
        if let Some(mut m) = lock(&self.managed).remove(id) {
            for r in m.release() {
                if !r.ok() {
                    warn!("{id}: {}", r.describe());
                }
            }
        }
    }

    /// Detaches a device the guest ejected without being asked (e.g. through its own
    /// `/sys/bus/pci/slots/N/power`), off the vCPU thread that reported it.
    pub fn ejected_by_guest(self: &Arc<Self>, segment: u16, slot: u8) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("eject".into())
            .spawn(move || {
                // A removal the API asked for collects the eject itself; give it a moment.
                std::thread::sleep(Duration::from_millis(200));
                if !lock(&me.ejections.done).remove(&(segment, slot)) {
                    return;
                }
                let Some(dev) = me
                    .devices
                    .manager
                    .devices()
                    .into_iter()
                    .find(|d| d.segment == segment && d.bdf.device() == slot)
                else {
                    return;
                };
                info!("{}: the guest ejected it; detaching", dev.id);
                me.detach(&dev.id);
            });
        if let Err(e) = spawned {
            warn!("cannot start the thread that detaches an ejected device: {e}");
        }
    }

    fn detach(&self, id: &str) {
        if let Err(e) = self.devices.manager.detach(id) {
            warn!("{id}: {e}");
        }
        self.devices.passthrough.forget(id);
        lock(&self.paths).remove(id);
        self.give_back(id);
    }
}

fn canonical(path: &std::path::Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn sysfs_name(path: &std::path::Path) -> String {
    canonical(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl VmApi for VmControl {
    fn info(&self) -> Result<serde_json::Value, ApiError> {
        let c = &self.config;
        let devices: Vec<serde_json::Value> = self
            .devices
            .manager
            .devices()
            .into_iter()
            .map(|d| {
                let bars: Vec<serde_json::Value> = d
                    .bars
                    .iter()
                    .map(|(spec, addr)| {
                        serde_json::json!({
                            "index": spec.index.get(),
                            "address": format!("{addr:#x}"),
                            "size": spec.size,
                            "kind": format!("{:?}", spec.kind),
                            "prefetchable": spec.prefetchable,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "id": d.id,
                    "pci_segment": d.segment,
                    "bdf": bdf_string(d.segment, d.bdf),
                    "bars": bars,
                    "peer_to_peer": d.peer_dma.as_ref().map(Result::is_ok),
                })
            })
            .collect();
        Ok(serde_json::json!({
            "config": {
                "cpus": { "boot_vcpus": c.boot_vcpus },
                "memory": {
                    "size": c.memory_bytes,
                    "hugepages": c.memory.hugepages,
                    "shared": c.memory.shared,
                    "prefault": c.memory.prefault == Some(true),
                },
                "payload": {
                    "kernel": c.kernel,
                    "initramfs": c.initramfs,
                    "cmdline": c.cmdline,
                },
                "platform": {
                    "num_pci_segments": c.pci.segments.len(),
                    "vfio_p2p_dma": c.pci.vfio_p2p_dma,
                },
            },
            "state": "Running",
            "devices": devices,
        }))
    }

    fn add_device(&self, r: AddDeviceRequest) -> Result<AddedDevice, ApiError> {
        let _busy = self.busy.enter("add-device")?;
        if r.iommu == Some(true) {
            return Err(ApiError::new(
                400,
                "iommu=on (a virtual IOMMU) is not supported by viaduct",
            ));
        }
        if let Some(c) = r.x_nv_gpudirect_clique {
            if c > MAX_GPUDIRECT_CLIQUE {
                return Err(ApiError::new(
                    400,
                    format!("x_nv_gpudirect_clique must be 0 to {MAX_GPUDIRECT_CLIQUE}, not {c}"),
                ));
            }
            if !self.config.pci.vfio_p2p_dma {
                return Err(ApiError::new(
                    400,
                    "x_nv_gpudirect_clique needs peer-to-peer DMA, which --platform \
                     vfio_p2p_dma=off turns off",
                ));
            }
        }
        if r.id
            .as_deref()
            .is_some_and(|id| id.is_empty() || id.chars().any(char::is_control))
        {
            return Err(ApiError::new(400, "id must be non-empty printable text"));
        }
        if !r.path.exists() {
            return Err(ApiError::new(
                400,
                format!(
                    "no such device: {}; list devices with `ls /sys/bus/pci/devices`",
                    r.path.display()
                ),
            ));
        }
        let wanted = canonical(&r.path);
        if let Some((id, _)) = lock(&self.paths).iter().find(|(_, p)| **p == wanted) {
            return Err(ApiError::new(
                409,
                format!("{} is already attached as {id}", r.path.display()),
            ));
        }
        let id = r.id.clone().unwrap_or_else(|| sysfs_name(&r.path));
        if self.find(&id).is_some() {
            return Err(ApiError::new(
                409,
                format!("a device with id {id} is already attached"),
            ));
        }
        let managed = r.managed.unwrap_or(false);
        let guard = if managed {
            let taken = ManagedDevices::take(HostPaths::from_env(), KernelWriter, &[&r.path])
                .map_err(|e| ApiError::from_error(400, &e))?;
            Some(taken)
        } else {
            None
        };
        let cfg = PassthroughDeviceConfig {
            path: r.path.clone(),
            pci_segment: r.pci_segment.unwrap_or(0),
            id: Some(id.clone()),
            gpudirect_clique: r.x_nv_gpudirect_clique,
            managed,
        };
        let attached = self
            .devices
            .passthrough
            .attach(&self.devices.manager, &cfg)
            .map_err(|e| ApiError::from_error(attach_status(&e), &e));
        let attached = match attached {
            Ok(a) => a,
            Err(e) => {
                // The device was dropped (its fd closed) with the failed attach.
                drop(guard);
                return Err(e);
            }
        };
        if let Some(g) = guard {
            lock(&self.managed).insert(id.clone(), g);
        }
        lock(&self.paths).insert(id.clone(), wanted);
        if let Err(e) = lock(&self.hotplug).plug(attached.segment, attached.bdf.device()) {
            warn!("{id}: {e}");
        }
        self.notify_guest();
        info!(
            "{id}: hot-added at {}; the guest was told",
            bdf_string(attached.segment, attached.bdf)
        );
        Ok(AddedDevice {
            id,
            bdf: bdf_string(attached.segment, attached.bdf),
        })
    }

    fn remove_device(&self, id: &str) -> Result<(), ApiError> {
        let _busy = self.busy.enter("remove-device")?;
        let dev = self
            .find(id)
            .ok_or_else(|| ApiError::new(404, format!("no device with id {id} is attached")))?;
        let (segment, slot) = (dev.segment, dev.bdf.device());
        lock(&self.hotplug)
            .unplug_request(segment, slot)
            .map_err(|e| ApiError::from_error(500, &e))?;
        self.notify_guest();
        info!("{id}: asked the guest to eject it");
        if !self.ejections.wait(segment, slot, self.eject_timeout) {
            return Err(ApiError::new(
                408,
                format!(
                    "the guest did not eject {id} within {} s (does it run an ACPI hotplug \
                     driver, acpiphp?); the device is still attached; retry, or shut the guest \
                     down",
                    self.eject_timeout.as_secs()
                ),
            ));
        }
        self.detach(id);
        info!("{id}: removed");
        Ok(())
    }

    fn shutdown(&self) -> Result<(), ApiError> {
        info!("API: vm.shutdown");
        self.exit.notify(ExitReason::PowerOff);
        Ok(())
    }

    fn reboot(&self) -> Result<(), ApiError> {
        info!("API: vm.reboot");
        self.exit.notify(ExitReason::Reboot);
        Ok(())
    }

    fn power_button(&self) -> Result<(), ApiError> {
        info!("API: vm.power-button");
        lock(&self.ged)
            .notify(GED_POWER_BUTTON)
            .map_err(|e| ApiError::from_error(500, &e))
    }

    fn shutdown_vmm(&self) -> Result<(), ApiError> {
        info!("API: vmm.shutdown");
        self.exit.notify(ExitReason::PowerOff);
        Ok(())
    }
}
