//! Errors of host device management: each one sentence naming the device and the remedy.

use std::io;
use std::path::PathBuf;

use crate::error::VfioError;

/// What went wrong managing a host device.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A device argument that is not a PCI address.
    #[error(
        "\"{given}\" is not a PCI address: give DDDD:BB:DD.F (e.g. 0000:01:00.0) or BB:DD.F, as \
         `viaduct devices` lists them"
    )]
    BadBdf {
        /// What was given.
        given: String,
    },

    /// No such PCI device on this host.
    #[error(
        "there is no PCI device {bdf} on this host ({} does not exist); list the devices with \
         `viaduct devices`",
        .path.display()
    )]
    NoSuchDevice {
        /// The address.
        bdf: String,
        /// Where it was looked for.
        path: PathBuf,
    },

    /// The vfio-pci driver is not registered.
    #[error("vfio-pci is not loaded: run modprobe vfio-pci")]
    VfioPciNotLoaded,

    /// Refused: the device is a PCI bridge.
    #[error(
        "{bdf} is a bridge ({}, class {class:06x}): binding it to vfio-pci would cut the host \
         off from every device behind it; pass through the devices behind it instead (or give \
         --force if you really mean it)",
        crate::sysfs::class_name(*.class)
    )]
    IsBridge {
        /// The address.
        bdf: String,
        /// Its class code.
        class: u32,
    },

    /// Refused: the device holds the host's root filesystem.
    #[error(
        "{bdf} holds the host's root filesystem (on {disk}): binding it to vfio-pci would take \
         the root filesystem away from the running host; refusing (give --force if the root \
         filesystem does not really depend on it)"
    )]
    HoldsRootFs {
        /// The address.
        bdf: String,
        /// The block device under it that backs `/`.
        disk: String,
    },

    /// A sysfs write the kernel refused.
    #[error("cannot {action} {device}: writing \"{}\" to {} failed: {}", .value.trim_end(), .file.display(), write_remedy(.error))]
    Write {
        /// What viaduct was doing, e.g. "unbind from nvme".
        action: String,
        /// The device (BDF, UUID).
        device: String,
        /// The attribute.
        file: PathBuf,
        /// What was written.
        value: String,
        /// The kernel's answer (part of the message, not a separate `source`).
        error: io::Error,
    },

    /// The kernel accepted the writes but the device ended up on another driver.
    #[error(
        "{bdf} did not bind to {wanted} (its driver is now {}); the kernel log (`dmesg | tail`) \
         says why",
        .now.as_deref().unwrap_or("none")
    )]
    BindDidNotTake {
        /// The address.
        bdf: String,
        /// The driver asked for.
        wanted: String,
        /// The driver it has now.
        now: Option<String>,
    },

    /// The state file could not be read or written.
    #[error("cannot {action} the state file {}: {detail}", .file.display())]
    State {
        /// "read" or "write".
        action: &'static str,
        /// The file.
        file: PathBuf,
        /// Why.
        detail: String,
    },

    /// `managed=on` given for something that is not a PCI function.
    #[error(
        "managed=on needs a PCI device, and {} is not one: create a mediated device with \
         `viaduct mdev create` and pass it without managed=on",
        .path.display()
    )]
    ManagedNotPci {
        /// The `--device path=`.
        path: PathBuf,
    },

    /// SR-IOV asked of a device without the capability.
    #[error(
        "{bdf} cannot have virtual functions: it has no SR-IOV capability (no sriov_totalvfs in \
         sysfs){hint}"
    )]
    NotSriov {
        /// The address.
        bdf: String,
        /// For a VF: ", it is itself a VF of …".
        hint: String,
    },

    /// More VFs than the device offers.
    #[error("{bdf} offers at most {total} VFs (sriov_totalvfs); cannot enable {requested}")]
    TooManyVfs {
        /// The PF.
        bdf: String,
        /// Asked for.
        requested: u32,
        /// `sriov_totalvfs`.
        total: u32,
    },

    /// The VFs would need bus numbers (or MMIO space) the host did not reserve.
    #[error(
        "bus number out of range: the bus of {bdf} cannot take {requested} VFs (the host needs \
         `pci=assign-busses` or firmware support; if dmesg says the VF BARs did not fit, \
         `pci=realloc`)"
    )]
    SriovBusRange {
        /// The PF.
        bdf: String,
        /// Asked for.
        requested: u32,
    },

    /// The PF's driver cannot configure SR-IOV.
    #[error(
        "cannot set the number of VFs of {bdf}: {}; bind the PF to its own driver (not vfio-pci \
         or none) first",
        .driver.as_deref().map_or("it has no driver".to_string(),
            |d| format!("its driver {d} does not support SR-IOV configuration through sysfs"))
    )]
    SriovNoDriver {
        /// The PF.
        bdf: String,
        /// Its driver.
        driver: Option<String>,
    },

    /// The device offers no mediated device types at all.
    #[error(
        "{bdf} offers no mediated device types (no mdev_supported_types in sysfs): its driver \
         ({}) does not support mdev, or its vendor's vGPU/mdev support is not enabled",
        .driver.as_deref().unwrap_or("none")
    )]
    NoMdevSupport {
        /// The parent.
        bdf: String,
        /// Its driver.
        driver: Option<String>,
    },

    /// The type asked for is not one the parent offers.
    #[error("{bdf} does not offer the mdev type {wanted}; it offers: {offered}")]
    MdevTypeNotOffered {
        /// The parent.
        bdf: String,
        /// The type asked for.
        wanted: String,
        /// The types offered, with names.
        offered: String,
    },

    /// No instance of the type can be created now.
    #[error(
        "{bdf} has no available instances of mdev type {mdev_type} (available_instances is 0): \
         remove an existing mediated device first (`ls /sys/bus/mdev/devices`), or pick a smaller \
         type"
    )]
    NoMdevInstances {
        /// The parent.
        bdf: String,
        /// The type.
        mdev_type: String,
    },

    /// A malformed UUID.
    #[error(
        "\"{given}\" is not a UUID: give 8-4-4-4-12 hex digits, e.g. \
         c2e088c6-7fd5-4b7d-9d5b-0f8c2b3c0a11 (or leave --uuid out to get a new one)"
    )]
    BadUuid {
        /// What was given.
        given: String,
    },

    /// A UUID already in use.
    #[error("a mediated device {uuid} already exists; pick another UUID or leave --uuid out")]
    MdevExists {
        /// The UUID.
        uuid: String,
    },

    /// No such mediated device.
    #[error(
        "there is no mediated device {uuid} ({} does not exist); list them with `ls \
         /sys/bus/mdev/devices`",
        .path.display()
    )]
    NoSuchMdev {
        /// The UUID.
        uuid: String,
        /// Where it was looked for.
        path: PathBuf,
    },

    /// The kernel could not produce a UUID.
    #[error("cannot read a new UUID from {}: {detail}; give one with --uuid", .file.display())]
    NoUuid {
        /// The file.
        file: PathBuf,
        /// Why.
        detail: String,
    },

    /// A sysfs read of the shared VFIO layer failed.
    #[error(transparent)]
    Vfio(#[from] VfioError),
}

/// The kernel's errno as a short sentence with the usual remedy for sysfs writes.
fn write_remedy(e: &io::Error) -> String {
    let text = crate::error::describe_errno(e.raw_os_error().unwrap_or(0));
    let text = if e.raw_os_error().is_some() {
        text
    } else {
        e.to_string()
    };
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => format!("{text} (run viaduct as root)"),
        Some(libc::ENOENT) => format!("{text} (the attribute does not exist on this kernel)"),
        _ => text,
    }
}
