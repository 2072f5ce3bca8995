//! One VM's ownership of host devices through VFIO: the KVM VFIO pseudo-device, the VFIO
//! container (one IOMMU domain for every passed-through device) and the devices opened into it.
//!
//! [`VfioHost::open_device`] runs the sysfs checks of [`crate::sysfs`] first, so that a device on
//! the wrong driver or a group with a host-owned sibling is reported with its remedy before
//! `/dev/vfio` is touched; then it opens the device with `vfio_ioctls::VfioDevice::new`, which
//! opens the group (once per group: vfio-ioctls caches groups per container), attaches it to the
//! container, registers it with KVM and gets the device fd.
//!
//! # Teardown order
//! The VMM must release things in this order:
//! 1. the passthrough devices (their BAR memslots, mmaps and interrupts, then the last
//!    `Arc<VfioDevice>`, which closes the device fd and detaches the group from KVM and from the
//!    container once its last device is gone);
//! 2. the DMA mappings of guest RAM ([`VfioHost::unmap_guest_memory`]; `Drop` unmaps whatever
//!    is left), so that no device can reach guest RAM once it is freed;
//! 3. the [`VfioHost`] itself (the container and the KVM VFIO device), and only then guest RAM.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::VmFd;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioOps};

use crate::access::region;
use crate::dma::DmaMapping;
use crate::error::{describe_errno, GroupReport, VfioError};
use crate::sysfs::{self, DeviceKind, HostDevice, PciIds, HOST_SYSFS};

/// The VFIO container device.
const CONTAINER_PATH: &str = "/dev/vfio/vfio";

/// A host device opened for passthrough.
pub struct OpenedDevice {
    /// BDF (`0000:01:00.0`) or mdev UUID.
    pub name: String,
    /// Its sysfs directory, symlinks resolved.
    pub path: PathBuf,
    /// PCI function or mdev.
    pub kind: DeviceKind,
    /// IOMMU group id.
    pub group: u32,
    /// The VFIO device.
    pub device: Arc<VfioDevice>,
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// 24-bit class code.
    pub class: u32,
}

/// A VM's VFIO state: the KVM VFIO device and the container every device is opened into. Create
/// it once, and only when the VM has a `--device`. See the module docs for the teardown order.
pub struct VfioHost {
    pub(crate) container: Arc<VfioContainer>,
    sysfs_root: PathBuf,
    /// Devices opened so far and being opened, by name, to refuse the same device twice with a
    /// clear message.
    opened: Mutex<Opened>,
    /// Number of devices ever opened: the container has an IOMMU once this is non-zero.
    pub(crate) devices_opened: AtomicUsize,
    /// Guest RAM currently DMA-mapped.
    pub(crate) mappings: Mutex<Vec<DmaMapping>>,
    /// BAR areas currently DMA-mapped for peer-to-peer.
    pub(crate) peers: Mutex<Vec<DmaMapping>>,
    /// What the IOMMU reported, once asked.
    pub(crate) iommu: Mutex<Option<crate::iommu_info::IommuInfo>>,
}

/// The devices of a [`VfioHost`], by name (BDF or mdev UUID).
struct Opened<D = VfioDevice> {
    /// Opened (the entry outlives the device; an entry that no longer upgrades is closed).
    open: HashMap<String, Weak<D>>,
    /// Being opened on some thread right now.
    opening: HashSet<String>,
}

impl<D> Default for Opened<D> {
    fn default() -> Self {
        Opened {
            open: HashMap::new(),
            opening: HashSet::new(),
        }
    }
}

impl<D> Opened<D> {
    /// Marks `name` as being opened; false when it is open or being opened already.
    fn start(&mut self, name: &str) -> bool {
        let open = self.open.get(name).and_then(Weak::upgrade).is_some();
        !open && self.opening.insert(name.to_string())
    }

    /// `name` is no longer being opened: it is open as `device`, or its open failed (`None`).
    fn end(&mut self, name: &str, device: Option<&Arc<D>>) {
        self.opening.remove(name);
        if let Some(device) = device {
            self.open.insert(name.to_string(), Arc::downgrade(device));
        }
    }

    /// Whether any device is still open.
    fn any_open(&self) -> bool {
        self.open.values().any(|d| d.strong_count() > 0)
    }
}

fn setup_error(what: &str, detail: impl Into<String>) -> VfioError {
    VfioError::Setup {
        what: what.to_string(),
        detail: detail.into(),
    }
}

/// Maps a failure to open `/dev/vfio/vfio`.
fn container_open_error(e: &io::Error) -> VfioError {
    match e.kind() {
        io::ErrorKind::NotFound => VfioError::ModulesNotLoaded,
        io::ErrorKind::PermissionDenied => VfioError::PermissionDenied {
            file: PathBuf::from(CONTAINER_PATH),
            context: " (the VFIO container)".to_string(),
            remedy: "check its permissions with `ls -l /dev/vfio/vfio` (normally crw-rw-rw-) and \
                     that your user may open it (group membership, udev rules), or run as root"
                .to_string(),
        },
        _ => setup_error(
            "opening /dev/vfio/vfio",
            e.raw_os_error()
                .map_or_else(|| e.to_string(), describe_errno),
        ),
    }
}

/// Maps an error of `VfioContainer::new`.
fn container_error(e: vfio_ioctls::VfioError) -> VfioError {
    use vfio_ioctls::VfioError as E;
    match e {
        E::OpenContainer(io) => container_open_error(&io),
        E::VfioApiVersion => setup_error(
            "checking the VFIO API version",
            "the kernel's VFIO API version differs from the one viaduct was built for",
        ),
        E::VfioExtension | E::VfioType1V2 | E::VfioInvalidType => setup_error(
            "checking for the type1v2 IOMMU backend",
            "the kernel's VFIO has no type1v2 IOMMU backend; load it with \
             `modprobe vfio_iommu_type1` (as root)",
        ),
        other => setup_error("creating the VFIO container", other.to_string()),
    }
}

impl VfioHost {
    /// Creates the KVM VFIO device for `vm` and the VFIO container.
    pub fn new(vm: &VmFd) -> Result<Self, VfioError> {
        // Checked first so that a host without the modules gets the remedy, not a KVM error.
        if let Err(e) = std::fs::metadata(CONTAINER_PATH) {
            return Err(container_open_error(&e));
        }
        let mut create = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let kvm_vfio = vm.create_device(&mut create).map_err(|e| {
            let detail = if e.errno() == libc::ENODEV {
                "this KVM has no VFIO device (a kernel built without CONFIG_KVM_VFIO?)".to_string()
            } else {
                describe_errno(e.errno())
            };
            setup_error("creating the KVM VFIO device (KVM_CREATE_DEVICE)", detail)
        })?;
        let handle = Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio));
        let container = VfioContainer::new(Some(handle)).map_err(container_error)?;
        Ok(VfioHost {
            container: Arc::new(container),
            sysfs_root: PathBuf::from(HOST_SYSFS),
            opened: Mutex::new(Opened::default()),
            devices_opened: AtomicUsize::new(0),
            mappings: Mutex::new(Vec::new()),
            peers: Mutex::new(Vec::new()),
            iommu: Mutex::new(None),
        })
    }

    /// Whether any device opened into this container is still open. Once none is, every group
    /// has left the container and the kernel has dropped its DMA mappings with its IOMMU.
    pub(crate) fn any_device_open(&self) -> bool {
        self.opened().any_open()
    }

    fn opened(&self) -> std::sync::MutexGuard<'_, Opened> {
        self.opened.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the device at `path` (a `--device path=`) into this VM's container, after checking
    /// its driver and its IOMMU group in sysfs. Several devices may be opened at once from
    /// threads of their own: the kernel resets each as it is opened (an FLR waits 100 ms, a
    /// GPU's bus reset a second or more), and those resets then overlap.
    pub fn open_device(&self, path: &Path) -> Result<OpenedDevice, VfioError> {
        let dev = sysfs::prepare_device(&self.sysfs_root, path)?;

        if !self.opened().start(&dev.name) {
            return Err(open_error(
                &dev,
                "opening the device",
                "it is already passed through to this VM (the same device given twice?)",
            ));
        }
        let ops: Arc<dyn VfioOps> = self.container.clone();
        let device = VfioDevice::new(&dev.path, ops, false)
            .map(Arc::new)
            .map_err(|e| map_open_error(&self.sysfs_root, &dev, e));
        self.opened().end(&dev.name, device.as_ref().ok());
        let device = device?;
        self.devices_opened.fetch_add(1, Ordering::SeqCst);

        let ids = dev.ids.unwrap_or_else(|| ids_from_config(&device));
        log::info!(
            "VFIO: opened {} ({:04x}:{:04x}, class {:06x}) in IOMMU group {}",
            dev.name,
            ids.vendor_id,
            ids.device_id,
            ids.class,
            dev.group
        );
        Ok(OpenedDevice {
            name: dev.name,
            path: dev.path,
            kind: dev.kind,
            group: dev.group,
            device,
            vendor_id: ids.vendor_id,
            device_id: ids.device_id,
            class: ids.class,
        })
    }
}

/// Vendor, device and class from the first 12 bytes of the device's config space (for an mdev,
/// whose sysfs directory has none of them).
fn ids_from_config(device: &VfioDevice) -> PciIds {
    let mut b = [0xffu8; 12];
    device.region_read(region::CONFIG, &mut b, 0);
    PciIds {
        vendor_id: u16::from_le_bytes([b[0], b[1]]),
        device_id: u16::from_le_bytes([b[2], b[3]]),
        class: u32::from_le_bytes([b[9], b[10], b[11], 0]),
    }
}

fn open_error(dev: &HostDevice, what: &str, detail: impl Into<String>) -> VfioError {
    VfioError::Open {
        device: dev.name.clone(),
        group: dev.group,
        what: what.to_string(),
        detail: detail.into(),
    }
}

/// Maps an error of `VfioDevice::new` for `dev` to a sentence with the group and the remedy.
pub(crate) fn map_open_error(
    sysfs_root: &Path,
    dev: &HostDevice,
    e: vfio_ioctls::VfioError,
) -> VfioError {
    use vfio_ioctls::VfioError as E;
    let group = dev.group;
    let group_file = format!("/dev/vfio/{group}");
    match e {
        E::OpenGroup(io, _) => match io.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => VfioError::PermissionDenied {
                file: PathBuf::from(&group_file),
                context: format!(" (IOMMU group {group} of {})", dev.name),
                remedy: format!(
                    "run as root or give your user access to {group_file} (e.g. `chown $USER \
                     {group_file}`, or a udev rule)"
                ),
            },
            Some(libc::EBUSY) => VfioError::GroupBusy {
                device: dev.name.clone(),
                group,
            },
            Some(libc::ENOENT) => open_error(
                dev,
                &format!("opening {group_file}"),
                format!(
                    "it does not exist: {} is not bound to vfio-pci (check `readlink {}/driver`) \
                     or vfio-pci is not loaded (`modprobe vfio-pci`)",
                    dev.name,
                    dev.path.display()
                ),
            ),
            errno => open_error(
                dev,
                &format!("opening {group_file}"),
                errno.map_or_else(|| io.to_string(), describe_errno),
            ),
        },
        E::GroupViable => {
            let members = sysfs::group_members(sysfs_root, group).unwrap_or_default();
            VfioError::GroupNotViable(Box::new(GroupReport {
                device: dev.name.clone(),
                group,
                members,
                kernel_refused: true,
            }))
        }
        E::GetGroupStatus => open_error(
            dev,
            &format!("reading the status of {group_file} (VFIO_GROUP_GET_STATUS)"),
            "the kernel refused",
        ),
        E::GroupSetContainer => open_error(
            dev,
            "attaching the group to the VM's VFIO container (VFIO_GROUP_SET_CONTAINER)",
            "the kernel refused; the group may already be attached to another container",
        ),
        E::ContainerSetIOMMU(err) if err.errno() == libc::EPERM => open_error(
            dev,
            "setting up the type1v2 IOMMU for the container (VFIO_SET_IOMMU)",
            "the host has no interrupt remapping, which vfio_iommu_type1 requires by default. \
             Enable it (VT-d/AMD-Vi interrupt remapping in the firmware; on with intel_iommu=on \
             or amd_iommu=on) or, accepting that the device could forge interrupts, load the \
             module with `modprobe vfio_iommu_type1 allow_unsafe_interrupts=1`",
        ),
        E::ContainerSetIOMMU(err) => open_error(
            dev,
            "setting up the type1v2 IOMMU for the container (VFIO_SET_IOMMU)",
            describe_errno(err.errno()),
        ),
        E::SetDeviceAttr(err) => open_error(
            dev,
            "registering the group with KVM (KVM_DEV_VFIO_FILE_ADD)",
            describe_errno(err.errno()),
        ),
        E::GroupGetDeviceFD(err) => {
            let detail = match err.errno() {
                libc::EBUSY => "the device is busy: it is already open (another VM?)".to_string(),
                libc::EPERM | libc::EACCES => {
                    "permission denied (is it bound to vfio-pci? `readlink .../driver`)".to_string()
                }
                errno => describe_errno(errno),
            };
            open_error(
                dev,
                &format!("getting the device from {group_file} (VFIO_GROUP_GET_DEVICE_FD)"),
                detail,
            )
        }
        E::VfioDeviceGetInfo(err) => open_error(
            dev,
            "reading the device's VFIO information (VFIO_DEVICE_GET_INFO)",
            describe_errno(err.errno()),
        ),
        E::VfioDeviceGetInfoPCI => open_error(
            dev,
            "reading the device's VFIO information",
            "the kernel reports a PCI device with fewer regions or interrupts than a PCI \
             function has",
        ),
        E::VfioDeviceGetInfoOther => open_error(
            dev,
            "reading the device's VFIO information",
            "VFIO reports it as a non-PCI device; viaduct passes through PCI devices only",
        ),
        E::VfioDeviceGetRegionInfo(err) => open_error(
            dev,
            "reading the device's regions (VFIO_DEVICE_GET_REGION_INFO)",
            describe_errno(err.errno()),
        ),
        other => open_error(dev, "opening the device", other.to_string()),
    }
}

#[cfg(test)]
#[path = "container_tests.rs"]
mod tests;
