//! Turns the raw command-line values of [`Cli`] into a validated [`VmConfig`].
//!
//! Every rejected value becomes a [`ConfigError::Invalid`] naming the flag and the value as the
//! user wrote it; the reason is its [`std::error::Error::source`] (and the OS error below that,
//! for files), so a caller printing the chain joined with `": "` gets one line such as
//! `--memory size=0: memory size must be at least 16 MiB`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use vmm::api::ApiSocket;
use vmm::config::{
    ApiConfig, MemoryBacking, PassthroughDeviceConfig, PciConfig, PciSegmentConfig, SerialMode,
    VmConfig, DEFAULT_APERTURE_WEIGHT, DEFAULT_EJECT_TIMEOUT, MAX_GPUDIRECT_CLIQUE,
    MAX_PCI_SEGMENTS, MAX_VCPUS, MIN_MEMORY_BYTES,
};
use vmm::seccomp::SeccompMode;

use crate::cli::Cli;
use crate::options::{format_size, OptionError, OptionSpec};

/// Longest kernel command line accepted, in bytes (without the terminating NUL).
pub const MAX_CMDLINE_BYTES: usize = 65535;

/// Guest RAM must be a whole number of these.
pub const MEMORY_ALIGNMENT: u64 = 4 << 10;

/// `--cpus` keys.
const CPUS: OptionSpec = OptionSpec::new(&["boot"])
    .unsupported(&[
        "max",
        "topology",
        "kvm_hyperv",
        "max_phys_bits",
        "affinity",
        "features",
        "nested",
    ])
    .default_key("boot");

/// `--memory` keys.
const MEMORY: OptionSpec = OptionSpec::new(&[
    "size",
    "hugepages",
    "hugepage_size",
    "shared",
    "file",
    "prefault",
    "thp",
    "mergeable",
])
.unsupported(&[
    "hotplug_method",
    "hotplug_size",
    "hotplugged_size",
    "reserve",
    "zones",
])
.default_key("size");

/// `--platform` keys.
const PLATFORM: OptionSpec = OptionSpec::new(&["num_pci_segments", "vfio_p2p_dma"]).unsupported(&[
    "iommu_segments",
    "iommu_address_width",
    "iommufd",
    "iommufd_fd",
    "serial_number",
    "uuid",
    "oem_strings",
    "system_manufacturer",
    "system_product_name",
    "system_version",
    "system_serial_number",
    "system_uuid",
    "system_sku_number",
    "system_family",
    "chassis_asset_tag",
    "tdx",
    "sev_snp",
]);

/// `--pci-segment` keys (all of cloud-hypervisor's).
const PCI_SEGMENT: OptionSpec = OptionSpec::new(&[
    "pci_segment",
    "mmio32_aperture_weight",
    "mmio64_aperture_weight",
]);

/// `--api-socket` keys.
const API_SOCKET: OptionSpec =
    OptionSpec::new(&["path", "fd", "eject_timeout"]).default_key("path");

/// `--device` keys, and the cloud-hypervisor ones viaduct does not implement.
const DEVICE: OptionSpec = OptionSpec::new(&[
    "path",
    "pci_segment",
    "x_nv_gpudirect_clique",
    "id",
    "managed",
])
.unsupported(&["fd", "iommu", "pci_device_id", "x_exclude_mmap_bars"]);

/// Where host PCI devices are listed, for error messages.
const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// Default number of boot vCPUs when `--cpus` has no `boot` key.
const DEFAULT_BOOT_VCPUS: u8 = 1;
/// Default guest RAM when `--memory` has no `size` key.
const DEFAULT_MEMORY_BYTES: u64 = 512 << 20;
/// Default number of PCI segments when `--platform` has no `num_pci_segments` key.
const DEFAULT_NUM_PCI_SEGMENTS: u16 = 1;
/// Segment a `--pci-segment` value configures when it has no `pci_segment` key.
const DEFAULT_PCI_SEGMENT: u64 = 0;

/// Why the command line does not describe a VM viaduct can run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--kernel` was not given.
    #[error(
        "--kernel is required: give the guest kernel (a bzImage or ELF vmlinux) as --kernel PATH"
    )]
    MissingKernel,
    /// A flag's value was rejected; `source` says why.
    #[error("{flag} {value}")]
    Invalid {
        /// The flag, with its dashes (`--memory`).
        flag: &'static str,
        /// The value as given, made printable on one line (control characters escaped, long
        /// values shortened).
        value: String,
        /// What is wrong with it.
        #[source]
        source: InvalidValue,
    },
}

impl ConfigError {
    /// Builds [`ConfigError::Invalid`] for `flag` given `value`.
    pub fn invalid(flag: &'static str, value: &str, source: impl Into<InvalidValue>) -> Self {
        Self::Invalid {
            flag,
            value: printable(value),
            source: source.into(),
        }
    }

    /// The flag this error is about.
    pub fn flag(&self) -> &'static str {
        match self {
            Self::MissingKernel => "--kernel",
            Self::Invalid { flag, .. } => flag,
        }
    }
}

/// The reason a single flag value was rejected.
#[derive(Debug, thiserror::Error)]
pub enum InvalidValue {
    /// The `key=value` syntax or one of the values is wrong.
    #[error(transparent)]
    Option(#[from] OptionError),
    /// `stat` failed (usually: no such file).
    #[error("cannot access the file")]
    FileAccess(#[source] io::Error),
    /// The path is a directory, device, FIFO, ...
    #[error("not a regular file (it is {0})")]
    NotRegularFile(&'static str),
    /// The file exists but cannot be opened for reading.
    #[error("cannot open the file for reading")]
    FileUnreadable(#[source] io::Error),
    /// The serial output file cannot be created or opened for writing.
    #[error("cannot open the file for writing")]
    FileUnwritable(#[source] io::Error),
    /// The kernel command line is too long.
    #[error("the kernel command line is {0} bytes long; the limit is {MAX_CMDLINE_BYTES} bytes")]
    CmdlineTooLong(usize),
    /// The kernel command line contains a NUL byte.
    #[error("the kernel command line contains a NUL byte at offset {0}")]
    CmdlineNul(usize),
    /// `boot=N` with N outside 1..=MAX_VCPUS.
    #[error("the number of boot vCPUs must be between 1 and {MAX_VCPUS}, not {0}")]
    VcpuCount(u64),
    /// Less RAM than [`MIN_MEMORY_BYTES`].
    #[error("memory size must be at least {}", format_size(MIN_MEMORY_BYTES))]
    MemoryTooSmall,
    /// `--seccomp` not one of its values.
    #[error("expected true (confine every thread), false (no filters) or log (log what a filter would stop)")]
    SeccompMode,
    /// Above [`arch::layout::MAX_GUEST_RAM`].
    #[error(
        "{} GiB is more than viaduct gives a guest (at most {} GiB: the guest's physical \
         address space must also hold the PCI apertures)",
        .0 >> 30,
        arch::layout::MAX_GUEST_RAM >> 30
    )]
    MemoryTooLarge(u64),
    /// RAM that is not a whole number of 4 KiB pages.
    #[error("memory size ({0} bytes) must be a multiple of 4 KiB")]
    MemoryUnaligned(u64),
    /// `hugepage_size=` without `hugepages=on`.
    #[error("hugepage_size= needs hugepages=on")]
    HugepageSizeWithoutHugepages,
    /// A hugepage size x86-64 does not have.
    #[error("hugepage_size must be 2M or 1G (the hugepage sizes of x86-64), not {}", format_size(*.0))]
    HugepageSize(u64),
    /// `file=` together with `hugepages=on`.
    #[error(
        "file= backs guest RAM with that file; for hugepages put the file (or give a directory) \
         on a hugetlbfs mount and leave hugepages= out"
    )]
    FileWithHugepages,
    /// `file=` together with `shared=off`.
    #[error("file= maps the file shared (the guest's writes reach it); drop shared=off")]
    FileNotShared,
    /// `file=` with nothing after it.
    #[error("file= needs a path: a file, or a directory (e.g. a hugetlbfs mount) to make one in")]
    FileEmpty,
    /// `mergeable=on` with shared or hugepage memory.
    #[error("mergeable=on: KSM merges only private anonymous memory, not {0}")]
    MergeableBacking(&'static str),
    /// `mergeable=on` with a passed-through device.
    #[error(
        "mergeable=on cannot be used with --device: VFIO pins every page of guest RAM for DMA, \
         and pinned pages cannot be merged; drop mergeable=on"
    )]
    MergeableWithPassthrough,
    /// A cloud-hypervisor serial mode viaduct does not implement.
    #[error("serial mode \"{0}\" is not supported by viaduct; use off, null, tty or file=PATH")]
    SerialUnsupported(&'static str),
    /// Not a serial mode at all.
    #[error("unknown serial mode; expected off, null, tty or file=PATH")]
    SerialUnknown,
    /// `file=` without a path.
    #[error("file= needs a path")]
    SerialEmptyPath,
    /// `num_pci_segments=N` with N outside 1..=MAX_PCI_SEGMENTS.
    #[error("the number of PCI segments must be between 1 and {MAX_PCI_SEGMENTS}, not {0}")]
    PciSegmentCount(u64),
    /// An aperture weight of 0.
    #[error("{0} must be at least 1 (weights are relative shares of the aperture)")]
    ZeroApertureWeight(&'static str),
    /// `pci_segment=K` with K not below `num_pci_segments`.
    #[error("{}", pci_segment_out_of_range(*.segment, *.count))]
    PciSegmentOutOfRange {
        /// The segment the value names.
        segment: u64,
        /// `--platform num_pci_segments`.
        count: u16,
    },
    /// Two `--pci-segment` values for the same segment.
    #[error(
        "PCI segment {segment} is already configured by --pci-segment {first}{implicit}; give \
         each segment once",
        implicit = if *.implicit { IMPLICIT_SEGMENT_NOTE } else { "" }
    )]
    DuplicatePciSegment {
        /// The segment configured twice.
        segment: u64,
        /// Whether either value leaves `pci_segment` out (and so means segment 0).
        implicit: bool,
        /// The earlier value for the same segment, made printable.
        first: String,
    },
    /// A `--device` value without `path=` (or with an empty one).
    #[error(
        "path= is required: give the device's sysfs directory, e.g. \
         path={SYSFS_PCI_DEVICES}/0000:01:00.0 (list devices with `ls {SYSFS_PCI_DEVICES}`)"
    )]
    DevicePathMissing,
    /// A `--disk` value is wrong; see [`crate::disk::DiskError`].
    #[error(transparent)]
    Disk(#[from] crate::disk::DiskError),
    /// A `--console` or `--rng` value is wrong; see [`crate::console::ConsoleError`].
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
    /// A `--net` value is wrong; see [`crate::net::NetError`].
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// The device path does not exist.
    #[error("no such device: {0}; list devices with `ls {SYSFS_PCI_DEVICES}`")]
    NoSuchDevice(String),
    /// `stat` on the device path failed for another reason than "not found".
    #[error("cannot access the device directory {path}")]
    DeviceInaccessible {
        /// The path, made printable.
        path: String,
        /// What `stat` said.
        #[source]
        source: io::Error,
    },
    /// The device path exists but is a file, not a sysfs device directory.
    #[error(
        "{path} is not a device directory (it is {kind}); give the device's sysfs directory, \
         e.g. {SYSFS_PCI_DEVICES}/0000:01:00.0"
    )]
    NotADeviceDirectory {
        /// The path, made printable.
        path: String,
        /// What it is instead.
        kind: &'static str,
    },
    /// `x_nv_gpudirect_clique` not a whole number from 0 to [`MAX_GPUDIRECT_CLIQUE`].
    #[error(
        "x_nv_gpudirect_clique must be a whole number from 0 to {MAX_GPUDIRECT_CLIQUE}, not \
         \"{0}\": the clique id is a 4-bit field of the NVIDIA GPUDirect P2P capability"
    )]
    GpudirectClique(String),
    /// `x_nv_gpudirect_clique` with `--platform vfio_p2p_dma=off`.
    #[error(
        "x_nv_gpudirect_clique tells the guest driver that peer-to-peer DMA between the devices \
         works, but --platform vfio_p2p_dma=off turns peer-to-peer DMA off; remove one of the two"
    )]
    CliqueNeedsPeerToPeer,
    /// `--api-socket` with neither or both of path= and fd=.
    #[error("give the socket's path (path=PATH, or just PATH) or a listening socket's fd=N, one of the two")]
    ApiSocketTarget,
    /// `eject_timeout` out of range.
    #[error("eject_timeout is in seconds, from 1 to 3600")]
    EjectTimeout,
    /// `id=` with nothing after it.
    #[error("id= must not be empty; leave id out to name the device after its sysfs directory")]
    DeviceIdEmpty,
    /// `id=` with a control character in it.
    #[error("id must consist of printable characters")]
    DeviceIdNotPrintable,
    /// The same device (after resolving symlinks) given twice.
    #[error(
        "device {path} is already passed through by --device {first}{resolved}; give each \
         device once",
        resolved = .resolved.as_deref().map(|r| format!(" (both resolve to {r})")).unwrap_or_default()
    )]
    DuplicateDevice {
        /// The path as given, made printable.
        path: String,
        /// The earlier `--device` value for the same device, made printable.
        first: String,
        /// The common resolved path, when the two paths are spelled differently.
        resolved: Option<String>,
    },
    /// Two `--device` values with the same `id`.
    #[error("id \"{id}\" is already used by --device {first}; give each device its own id")]
    DuplicateDeviceId {
        /// The id, made printable.
        id: String,
        /// The earlier `--device` value with this id, made printable.
        first: String,
    },
}

/// Added to [`InvalidValue::DuplicatePciSegment`] when a value relies on the default segment.
const IMPLICIT_SEGMENT_NOTE: &str = " (a value without pci_segment= configures segment 0)";

/// `segment` as a segment number when it is below `count` (`--platform num_pci_segments`),
/// else the error every option with a `pci_segment=` key reports.
pub(crate) fn checked_segment(segment: u64, count: u16) -> Result<u16, InvalidValue> {
    u16::try_from(segment)
        .ok()
        .filter(|&s| s < count)
        .ok_or(InvalidValue::PciSegmentOutOfRange { segment, count })
}

/// The message for [`InvalidValue::PciSegmentOutOfRange`].
fn pci_segment_out_of_range(segment: u64, count: u16) -> String {
    let existing = if count == 1 {
        "the VM has 1 PCI segment (0)".to_string()
    } else {
        format!("the VM has {count} PCI segments (0 to {})", count - 1)
    };
    let fix = if segment < u64::from(MAX_PCI_SEGMENTS) {
        format!(
            "add --platform num_pci_segments={} to create it",
            segment + 1
        )
    } else {
        format!(
            "viaduct supports at most {MAX_PCI_SEGMENTS} segments (0 to {})",
            MAX_PCI_SEGMENTS - 1
        )
    };
    format!("PCI segment {segment} does not exist: {existing}; {fix}")
}

/// Makes `value` safe to show inside a one-line message: control characters are escaped and
/// anything past 200 characters is cut.
fn printable(value: &str) -> String {
    const LIMIT: usize = 200;
    let mut out = String::new();
    for (n, c) in value.chars().enumerate() {
        if n == LIMIT {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Builds the VM description from the parsed command line, checking every value.
pub fn build(cli: &Cli) -> Result<VmConfig, ConfigError> {
    let kernel = cli.kernel.as_deref().ok_or(ConfigError::MissingKernel)?;
    check_readable_file("--kernel", kernel)?;
    if let Some(initramfs) = cli.initramfs.as_deref() {
        check_readable_file("--initramfs", initramfs)?;
    }
    let cmdline = cli.cmdline.clone().unwrap_or_default();
    check_cmdline(&cmdline)?;
    let boot_vcpus = parse_cpus(&cli.cpus)?;
    let MemoryValue {
        bytes: memory_bytes,
        backing: memory,
    } = parse_memory(&cli.memory)?;
    let serial = parse_serial(&cli.serial)?;
    let console = crate::console::parse_console(&cli.console)?;
    crate::console::check_one_tty(&serial, &console, &cli.console)?;
    let pci = parse_pci(&cli.platform, &cli.pci_segments)?;
    // After --platform, whichever came first on the command line: pci_segment needs the count.
    let devices = parse_devices(&cli.devices, pci.segments.len())?;
    if memory.mergeable && !devices.is_empty() {
        return Err(ConfigError::invalid(
            "--memory",
            &cli.memory,
            InvalidValue::MergeableWithPassthrough,
        ));
    }
    if !pci.vfio_p2p_dma {
        if let Some((value, _)) = cli
            .devices
            .iter()
            .zip(&devices)
            .find(|(_, d)| d.gpudirect_clique.is_some())
        {
            return Err(ConfigError::invalid(
                "--device",
                value,
                InvalidValue::CliqueNeedsPeerToPeer,
            ));
        }
    }
    let disks = crate::disk::parse_disks(&cli.disks, pci.segments.len())?;
    // Last: opening a tap may create one, so everything else is checked first.
    let nets = crate::net::parse_nets(&cli.nets, pci.segments.len())?;
    Ok(VmConfig {
        kernel: kernel.to_path_buf(),
        initramfs: cli.initramfs.clone(),
        cmdline,
        boot_vcpus,
        memory_bytes,
        memory,
        serial,
        console,
        pci,
        devices,
        disks,
        api: cli
            .api_socket
            .as_deref()
            .map(parse_api_socket)
            .transpose()?,
        seccomp: parse_seccomp(&cli.seccomp)?,
        rng: crate::console::parse_rng(&cli.rng)?,
        nets,
    })
}

/// Parses `--seccomp true|false|log` (cloud-hypervisor's values; `on`/`off` also work).
pub fn parse_seccomp(value: &str) -> Result<SeccompMode, ConfigError> {
    match value {
        "true" | "on" => Ok(SeccompMode::Enforce),
        "false" | "off" => Ok(SeccompMode::Off),
        "log" => Ok(SeccompMode::Log),
        _ => Err(ConfigError::invalid(
            "--seccomp",
            value,
            InvalidValue::SeccompMode,
        )),
    }
}

/// Checks that `path` is an existing regular file that can be opened for reading.
pub fn check_readable_file(flag: &'static str, path: &Path) -> Result<(), ConfigError> {
    let invalid =
        |reason: InvalidValue| ConfigError::invalid(flag, &path.to_string_lossy(), reason);
    let metadata = fs::metadata(path).map_err(|e| invalid(InvalidValue::FileAccess(e)))?;
    if !metadata.is_file() {
        return Err(invalid(InvalidValue::NotRegularFile(file_kind(&metadata))));
    }
    File::open(path).map_err(|e| invalid(InvalidValue::FileUnreadable(e)))?;
    Ok(())
}

/// Names what a non-regular file is, for error messages.
fn file_kind(metadata: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = metadata.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Checks the kernel command line's length and that it has no NUL byte.
pub fn check_cmdline(cmdline: &str) -> Result<(), ConfigError> {
    if let Some(offset) = cmdline.bytes().position(|b| b == 0) {
        return Err(ConfigError::invalid(
            "--cmdline",
            cmdline,
            InvalidValue::CmdlineNul(offset),
        ));
    }
    if cmdline.len() > MAX_CMDLINE_BYTES {
        return Err(ConfigError::invalid(
            "--cmdline",
            cmdline,
            InvalidValue::CmdlineTooLong(cmdline.len()),
        ));
    }
    Ok(())
}

/// Parses `--cpus boot=N` (or `--cpus N`) into the number of boot vCPUs.
pub fn parse_cpus(value: &str) -> Result<u8, ConfigError> {
    let invalid = |reason: InvalidValue| ConfigError::invalid("--cpus", value, reason);
    let options = CPUS.parse(value).map_err(|e| invalid(e.into()))?;
    let Some(boot) = options
        .get_int::<u64>("boot")
        .map_err(|e| invalid(e.into()))?
    else {
        return Ok(DEFAULT_BOOT_VCPUS);
    };
    match u8::try_from(boot) {
        Ok(n) if (1..=MAX_VCPUS).contains(&n) => Ok(n),
        _ => Err(invalid(InvalidValue::VcpuCount(boot))),
    }
}

/// Parses `--memory size=SIZE` (or `--memory SIZE`) into a byte count.
pub fn parse_memory(value: &str) -> Result<MemoryValue, ConfigError> {
    let invalid = |reason: InvalidValue| ConfigError::invalid("--memory", value, reason);
    let options = MEMORY.parse(value).map_err(|e| invalid(e.into()))?;
    let bytes = options
        .get_size("size")
        .map_err(|e| invalid(e.into()))?
        .unwrap_or(DEFAULT_MEMORY_BYTES);
    if bytes < MIN_MEMORY_BYTES {
        return Err(invalid(InvalidValue::MemoryTooSmall));
    }
    if bytes > arch::layout::MAX_GUEST_RAM {
        return Err(invalid(InvalidValue::MemoryTooLarge(bytes)));
    }
    if !bytes.is_multiple_of(MEMORY_ALIGNMENT) {
        return Err(invalid(InvalidValue::MemoryUnaligned(bytes)));
    }
    let toggle = |key| options.get_toggle(key).map_err(|e| invalid(e.into()));
    let hugepages = toggle("hugepages")?.unwrap_or(false);
    let shared = toggle("shared")?;
    let hugepage_size = options
        .get_size("hugepage_size")
        .map_err(|e| invalid(e.into()))?;
    if let Some(size) = hugepage_size {
        if !hugepages {
            return Err(invalid(InvalidValue::HugepageSizeWithoutHugepages));
        }
        if size != 2 << 20 && size != 1 << 30 {
            return Err(invalid(InvalidValue::HugepageSize(size)));
        }
    }
    let file = match options.get("file") {
        Some("") => return Err(invalid(InvalidValue::FileEmpty)),
        Some(path) => Some(PathBuf::from(path)),
        None => None,
    };
    if file.is_some() && hugepages {
        return Err(invalid(InvalidValue::FileWithHugepages));
    }
    if file.is_some() && shared == Some(false) {
        return Err(invalid(InvalidValue::FileNotShared));
    }
    let mergeable = toggle("mergeable")?.unwrap_or(false);
    if mergeable {
        let backing = if hugepages {
            Some("hugepages")
        } else if shared == Some(true) {
            Some("shared memory")
        } else if file.is_some() {
            Some("a file")
        } else {
            None
        };
        if let Some(what) = backing {
            return Err(invalid(InvalidValue::MergeableBacking(what)));
        }
    }
    Ok(MemoryValue {
        bytes,
        backing: MemoryBacking {
            hugepages,
            hugepage_size,
            shared: shared.unwrap_or(false) || file.is_some(),
            file,
            prefault: toggle("prefault")?,
            thp: toggle("thp")?.unwrap_or(true),
            mergeable,
        },
    })
}

/// What `--memory` sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryValue {
    /// `size`, in bytes.
    pub bytes: u64,
    /// The other keys.
    pub backing: MemoryBacking,
}

/// Parses `--serial off|null|tty|file=PATH`; for `file=` checks the file can be opened for
/// writing (creating it if needed; the VMM truncates it when it starts, as cloud-hypervisor
/// does).
pub fn parse_serial(value: &str) -> Result<SerialMode, ConfigError> {
    let invalid = |reason: InvalidValue| ConfigError::invalid("--serial", value, reason);
    match value {
        "off" => Ok(SerialMode::Off),
        "null" => Ok(SerialMode::Null),
        "tty" => Ok(SerialMode::Tty),
        "pty" => Err(invalid(InvalidValue::SerialUnsupported("pty"))),
        _ if value.starts_with("socket=") => {
            Err(invalid(InvalidValue::SerialUnsupported("socket=")))
        }
        _ => {
            let Some(path) = value.strip_prefix("file=") else {
                return Err(invalid(InvalidValue::SerialUnknown));
            };
            if path.is_empty() {
                return Err(invalid(InvalidValue::SerialEmptyPath));
            }
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(path)
                .map_err(|e| invalid(InvalidValue::FileUnwritable(e)))?;
            Ok(SerialMode::File(PathBuf::from(path)))
        }
    }
}

/// Parses `--api-socket PATH`, `path=PATH`, `fd=N` (and viaduct's `eject_timeout=SECONDS`).
pub fn parse_api_socket(value: &str) -> Result<ApiConfig, ConfigError> {
    let invalid = |reason: InvalidValue| ConfigError::invalid("--api-socket", value, reason);
    let options = API_SOCKET.parse(value).map_err(|e| invalid(e.into()))?;
    let fd = options
        .get_int::<i32>("fd")
        .map_err(|e| invalid(e.into()))?;
    let socket = match (options.get("path"), fd) {
        (Some(path), None) if !path.is_empty() => ApiSocket::Path(PathBuf::from(path)),
        (None, Some(fd)) if fd >= 0 => ApiSocket::Fd(fd),
        _ => return Err(invalid(InvalidValue::ApiSocketTarget)),
    };
    let eject_timeout = match options
        .get_int::<u64>("eject_timeout")
        .map_err(|e| invalid(e.into()))?
    {
        None => DEFAULT_EJECT_TIMEOUT,
        Some(s) if (1..=3600).contains(&s) => std::time::Duration::from_secs(s),
        Some(_) => return Err(invalid(InvalidValue::EjectTimeout)),
    };
    Ok(ApiConfig {
        socket,
        eject_timeout,
    })
}

/// What `--platform` sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlatformValue {
    /// `num_pci_segments` (default 1).
    pub num_pci_segments: u16,
    /// `vfio_p2p_dma` (default on).
    pub vfio_p2p_dma: bool,
}

/// Parses `--platform num_pci_segments=N,vfio_p2p_dma=on|off`.
pub fn parse_platform(value: &str) -> Result<PlatformValue, ConfigError> {
    let invalid = |reason: InvalidValue| ConfigError::invalid("--platform", value, reason);
    let options = PLATFORM.parse(value).map_err(|e| invalid(e.into()))?;
    let vfio_p2p_dma = options
        .get_toggle("vfio_p2p_dma")
        .map_err(|e| invalid(e.into()))?
        .unwrap_or(true);
    let Some(count) = options
        .get_int::<u64>("num_pci_segments")
        .map_err(|e| invalid(e.into()))?
    else {
        return Ok(PlatformValue {
            num_pci_segments: DEFAULT_NUM_PCI_SEGMENTS,
            vfio_p2p_dma,
        });
    };
    match u16::try_from(count) {
        Ok(n) if (1..=MAX_PCI_SEGMENTS).contains(&n) => Ok(PlatformValue {
            num_pci_segments: n,
            vfio_p2p_dma,
        }),
        _ => Err(invalid(InvalidValue::PciSegmentCount(count))),
    }
}

/// One `--pci-segment` value: the segment it names and its weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciSegmentValue {
    /// `pci_segment` (0 when omitted); not yet checked against `num_pci_segments`.
    pub segment: u64,
    /// Whether `pci_segment` was given explicitly.
    pub explicit: bool,
    /// The weights (1 when omitted, never 0).
    pub config: PciSegmentConfig,
}

/// Parses one `--pci-segment` value on its own (keys, numbers, non-zero weights). Whether the
/// segment exists is checked by [`parse_pci`], which knows `num_pci_segments`.
pub fn parse_pci_segment(value: &str) -> Result<PciSegmentValue, ConfigError> {
    let invalid = |reason: InvalidValue| ConfigError::invalid("--pci-segment", value, reason);
    let options = PCI_SEGMENT.parse(value).map_err(|e| invalid(e.into()))?;
    let segment = options
        .get_int::<u64>("pci_segment")
        .map_err(|e| invalid(e.into()))?;
    let weight = |key: &'static str| -> Result<u32, ConfigError> {
        match options.get_int::<u32>(key).map_err(|e| invalid(e.into()))? {
            None => Ok(DEFAULT_APERTURE_WEIGHT),
            Some(0) => Err(invalid(InvalidValue::ZeroApertureWeight(key))),
            Some(w) => Ok(w),
        }
    };
    Ok(PciSegmentValue {
        segment: segment.unwrap_or(DEFAULT_PCI_SEGMENT),
        explicit: segment.is_some(),
        config: PciSegmentConfig {
            mmio32_aperture_weight: weight("mmio32_aperture_weight")?,
            mmio64_aperture_weight: weight("mmio64_aperture_weight")?,
        },
    })
}

/// Builds the PCI topology from `--platform` and every `--pci-segment` value (in command-line
/// order, whichever flag came first): one entry per segment, weights 1 unless a `--pci-segment`
/// sets them; each segment may be configured once and must exist.
pub fn parse_pci(platform: &str, pci_segments: &[String]) -> Result<PciConfig, ConfigError> {
    let PlatformValue {
        num_pci_segments: count,
        vfio_p2p_dma,
    } = parse_platform(platform)?;
    let mut segments = vec![PciSegmentConfig::default(); usize::from(count)];
    // The value that configured each segment so far, and whether it named the segment.
    let mut seen: Vec<Option<(&str, bool)>> = vec![None; usize::from(count)];
    for value in pci_segments {
        let invalid = |reason: InvalidValue| ConfigError::invalid("--pci-segment", value, reason);
        let parsed = parse_pci_segment(value)?;
        let index = usize::from(checked_segment(parsed.segment, count).map_err(invalid)?);
        if let Some((first, first_explicit)) = seen[index] {
            return Err(invalid(InvalidValue::DuplicatePciSegment {
                segment: parsed.segment,
                implicit: !(parsed.explicit && first_explicit),
                first: printable(first),
            }));
        }
        seen[index] = Some((value, parsed.explicit));
        segments[index] = parsed.config;
    }
    Ok(PciConfig {
        segments,
        vfio_p2p_dma,
    })
}

/// One `--device` value, checked on its own; [`parse_devices`] checks it against the others and
/// against `num_pci_segments`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceValue {
    /// `path`, as given.
    pub path: PathBuf,
    /// `path` with symlinks resolved (or, if that fails, with a trailing `/` and `.` parts
    /// removed), to recognise the same device given twice.
    pub resolved: PathBuf,
    /// `pci_segment` (0 when omitted); not yet checked against `num_pci_segments`.
    pub segment: u64,
    /// `x_nv_gpudirect_clique`, 0..=[`MAX_GPUDIRECT_CLIQUE`].
    pub gpudirect_clique: Option<u8>,
    /// `id`, non-empty and printable.
    pub id: Option<String>,
    /// `managed=on`: viaduct binds the device to vfio-pci for the VM and gives it back after.
    pub managed: bool,
}

/// Parses the keys of one `--device` value (keys, numbers, the id) without looking at the
/// path: `viaduct remote add-device` uses it, since the path is the server's to check (it may
/// not even exist where the client runs). `resolved` is `path` as given.
pub fn parse_device_keys(value: &str) -> Result<DeviceValue, ConfigError> {
    let invalid = |reason: InvalidValue| ConfigError::invalid("--device", value, reason);
    let options = DEVICE.parse(value).map_err(|e| invalid(e.into()))?;
    let path = match options.get("path") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => return Err(invalid(InvalidValue::DevicePathMissing)),
    };
    let segment = options
        .get_int::<u64>("pci_segment")
        .map_err(|e| invalid(e.into()))?
        .unwrap_or(DEFAULT_PCI_SEGMENT);
    let gpudirect_clique = options
        .get("x_nv_gpudirect_clique")
        .map(|clique| {
            clique
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= MAX_GPUDIRECT_CLIQUE)
                .ok_or_else(|| invalid(InvalidValue::GpudirectClique(printable(clique))))
        })
        .transpose()?;
    let managed = options
        .get_toggle("managed")
        .map_err(|e| invalid(e.into()))?
        .unwrap_or(false);
    let id = options.get("id").map(str::to_string);
    match id.as_deref() {
        Some("") => return Err(invalid(InvalidValue::DeviceIdEmpty)),
        Some(id) if id.chars().any(char::is_control) => {
            return Err(invalid(InvalidValue::DeviceIdNotPrintable))
        }
        _ => {}
    }
    Ok(DeviceValue {
        resolved: path.clone(),
        path,
        segment,
        gpudirect_clique,
        id,
        managed,
    })
}

/// Parses one `--device` value on its own: keys, numbers, the id, and that `path` is an existing
/// directory. Whether it is really a PCI device, which driver holds it and whether its IOMMU
/// group is usable are the VMM's VFIO layer's checks when the VM starts.
pub fn parse_device(value: &str) -> Result<DeviceValue, ConfigError> {
    let invalid = |reason: InvalidValue| ConfigError::invalid("--device", value, reason);
    let mut parsed = parse_device_keys(value)?;
    let path = &parsed.path;
    let shown = || printable(&path.to_string_lossy());
    let metadata = fs::metadata(path).map_err(|e| {
        invalid(if e.kind() == io::ErrorKind::NotFound {
            InvalidValue::NoSuchDevice(shown())
        } else {
            InvalidValue::DeviceInaccessible {
                path: shown(),
                source: e,
            }
        })
    })?;
    if !metadata.is_dir() {
        let kind = if metadata.is_file() {
            "a regular file"
        } else {
            file_kind(&metadata)
        };
        return Err(invalid(InvalidValue::NotADeviceDirectory {
            path: shown(),
            kind,
        }));
    }
    parsed.resolved = fs::canonicalize(path).unwrap_or_else(|_| path.components().collect());
    Ok(parsed)
}

/// Builds the passthrough device list from every `--device` value, in command-line order: each
/// value must be valid on its own, sit on one of the `num_pci_segments` segments, name a device
/// no earlier value names and use an id no earlier value uses.
pub fn parse_devices(
    values: &[String],
    num_pci_segments: usize,
) -> Result<Vec<PassthroughDeviceConfig>, ConfigError> {
    // `num_pci_segments` comes from a validated PciConfig, so it fits.
    let count = u16::try_from(num_pci_segments).unwrap_or(u16::MAX);
    let mut devices = Vec::with_capacity(values.len());
    // The values accepted so far, with what was parsed from them.
    let mut seen: Vec<(&str, DeviceValue)> = Vec::with_capacity(values.len());
    for value in values {
        let invalid = |reason: InvalidValue| ConfigError::invalid("--device", value, reason);
        let parsed = parse_device(value)?;
        let pci_segment = checked_segment(parsed.segment, count).map_err(invalid)?;
        if let Some((first, other)) = seen.iter().find(|(_, d)| d.resolved == parsed.resolved) {
            let spelled = |p: &Path| p.components().collect::<PathBuf>();
            let resolved = (spelled(&other.path) != spelled(&parsed.path))
                .then(|| printable(&parsed.resolved.to_string_lossy()));
            return Err(invalid(InvalidValue::DuplicateDevice {
                path: printable(&parsed.path.to_string_lossy()),
                first: printable(first),
                resolved,
            }));
        }
        if let Some(id) = parsed.id.as_deref() {
            if let Some((first, _)) = seen.iter().find(|(_, d)| d.id.as_deref() == Some(id)) {
                return Err(invalid(InvalidValue::DuplicateDeviceId {
                    id: printable(id),
                    first: printable(first),
                }));
            }
        }
        devices.push(PassthroughDeviceConfig {
            path: parsed.path.clone(),
            pci_segment,
            id: parsed.id.clone(),
            gpudirect_clique: parsed.gpudirect_clique,
            managed: parsed.managed,
        });
        seen.push((value, parsed));
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// The message as `main` prints it: the error and its sources joined with ": ".
    fn chain(e: &ConfigError) -> String {
        crate::error_chain(e)
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("boot=1").unwrap(), 1);
        assert_eq!(parse_cpus("boot=254").unwrap(), 254);
        assert_eq!(parse_cpus("4").unwrap(), 4);
        assert_eq!(parse_cpus("").unwrap(), 1);
        for bad in [
            "boot=0",
            "boot=255",
            "boot=100000000000000000000",
            "boot=x",
            "0",
        ] {
            let e = parse_cpus(bad).unwrap_err();
            assert!(
                chain(&e).starts_with(&format!("--cpus {bad}: ")),
                "{}",
                chain(&e)
            );
        }
        assert_eq!(
            chain(&parse_cpus("boot=255").unwrap_err()),
            "--cpus boot=255: the number of boot vCPUs must be between 1 and 254, not 255"
        );
        let e = chain(&parse_cpus("boot=2,foo=1").unwrap_err());
        assert!(
            e.contains("unknown key \"foo\" (supported keys: boot)"),
            "{e}"
        );
        let e = chain(&parse_cpus("boot=2,max=4").unwrap_err());
        assert!(e.contains("\"max\" is a cloud-hypervisor option"), "{e}");
    }

    #[test]
    fn memory() {
        assert_eq!(parse_memory("size=512M").unwrap().bytes, 512 << 20);
        assert_eq!(parse_memory("size=2g").unwrap().bytes, 2 << 30);
        assert_eq!(parse_memory("1G").unwrap().bytes, 1 << 30);
        assert_eq!(parse_memory("size=16777216").unwrap().bytes, 16 << 20);
        assert_eq!(
            chain(&parse_memory("size=0").unwrap_err()),
            "--memory size=0: memory size must be at least 16 MiB"
        );
        assert_eq!(parse_memory("size=32T").unwrap().bytes, 32 << 40);
        assert_eq!(
            chain(&parse_memory("size=33T").unwrap_err()),
            "--memory size=33T: 33792 GiB is more than viaduct gives a guest (at most 32768 GiB: \
             the guest's physical address space must also hold the PCI apertures)"
        );
        assert_eq!(
            chain(&parse_memory("size=16777217").unwrap_err()),
            "--memory size=16777217: memory size (16777217 bytes) must be a multiple of 4 KiB"
        );
        let e = chain(&parse_memory("size=abc").unwrap_err());
        assert!(
            e.starts_with("--memory size=abc: size: \"abc\" is not a byte size"),
            "{e}"
        );
        let e = chain(&parse_memory("size=99999999999G").unwrap_err());
        assert!(e.contains("too large"), "{e}");
        assert!(parse_memory("size=1G,size=2G").is_err());
        assert!(parse_memory("size=1G,hotplug_size=2G").is_err());
    }

    #[test]
    fn api_socket_forms() {
        let path = |v| match parse_api_socket(v).unwrap().socket {
            ApiSocket::Path(p) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(path("/run/v.sock"), PathBuf::from("/run/v.sock"));
        assert_eq!(path("path=/run/v.sock"), PathBuf::from("/run/v.sock"));
        let fd = parse_api_socket("fd=7").unwrap();
        assert!(matches!(fd.socket, ApiSocket::Fd(7)));
        assert_eq!(fd.eject_timeout, DEFAULT_EJECT_TIMEOUT);
        let t = parse_api_socket("path=/s,eject_timeout=30").unwrap();
        assert_eq!(t.eject_timeout, std::time::Duration::from_secs(30));
        for (bad, want) in [
            ("path=/s,fd=3", "one of the two"),
            ("path=", "one of the two"),
            ("fd=-1", "one of the two"),
            ("eject_timeout=5", "one of the two"),
            ("fd=x", "fd"),
            ("path=/s,eject_timeout=0", "from 1 to 3600"),
            ("path=/s,eject_timeout=3601", "from 1 to 3600"),
            ("path=/s,bogus=1", "bogus"),
        ] {
            let e = chain(&parse_api_socket(bad).unwrap_err());
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn memory_backing_keys() {
        let m = parse_memory("size=1G,hugepages=on,hugepage_size=1G,prefault=on").unwrap();
        assert_eq!(m.bytes, 1 << 30);
        assert_eq!(
            m.backing,
            MemoryBacking {
                hugepages: true,
                hugepage_size: Some(1 << 30),
                prefault: Some(true),
                ..MemoryBacking::default()
            }
        );
        assert!(parse_memory("size=1G").unwrap().backing.thp);
        // Not given is not off: viaduct may prefault before pinning (vmm's prefault_before_pin).
        assert_eq!(parse_memory("size=1G").unwrap().backing.prefault, None);
        assert_eq!(
            parse_memory("size=1G,prefault=off")
                .unwrap()
                .backing
                .prefault,
            Some(false)
        );
        assert!(!parse_memory("size=1G,thp=off").unwrap().backing.thp);
        assert!(parse_memory("size=1G,shared=on").unwrap().backing.shared);
        let f = parse_memory("size=1G,file=/dev/hugepages").unwrap().backing;
        assert!(f.shared && f.file == Some(PathBuf::from("/dev/hugepages")));
        assert!(
            parse_memory("size=1G,mergeable=on")
                .unwrap()
                .backing
                .mergeable
        );
        for (bad, want) in [
            (
                "size=1G,hugepage_size=2M",
                "hugepage_size= needs hugepages=on",
            ),
            (
                "size=1G,hugepages=on,hugepage_size=4M",
                "hugepage_size must be 2M or 1G (the hugepage sizes of x86-64), not 4 MiB",
            ),
            (
                "size=1G,file=/x,hugepages=on",
                "on a hugetlbfs mount and leave hugepages= out",
            ),
            ("size=1G,file=/x,shared=off", "drop shared=off"),
            ("size=1G,file=", "file= needs a path"),
            (
                "size=1G,mergeable=on,shared=on",
                "KSM merges only private anonymous memory, not shared memory",
            ),
            ("size=1G,mergeable=on,hugepages=on", "not hugepages"),
            ("size=1G,prefault=maybe", "prefault"),
        ] {
            let e = chain(&parse_memory(bad).unwrap_err());
            assert!(
                e.starts_with(&format!("--memory {bad}: ")) && e.contains(want),
                "{e}"
            );
        }
    }

    #[test]
    fn serial() {
        assert_eq!(parse_serial("off").unwrap(), SerialMode::Off);
        assert_eq!(parse_serial("null").unwrap(), SerialMode::Null);
        assert_eq!(parse_serial("tty").unwrap(), SerialMode::Tty);
        for bad in ["pty", "socket=/tmp/s", "bogus", "file=", "file=/"] {
            let e = chain(&parse_serial(bad).unwrap_err());
            assert!(e.starts_with(&format!("--serial {bad}: ")), "{e}");
        }
        assert!(chain(&parse_serial("pty").unwrap_err()).contains("not supported"));
        let dir = std::env::temp_dir().join(format!("viaduct-config-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("serial.log");
        let value = format!("file={}", log.display());
        assert_eq!(parse_serial(&value).unwrap(), SerialMode::File(log.clone()));
        assert!(log.is_file());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cmdline() {
        assert!(check_cmdline("").is_ok());
        assert!(check_cmdline(&"a".repeat(MAX_CMDLINE_BYTES)).is_ok());
        let e = chain(&check_cmdline(&"a".repeat(MAX_CMDLINE_BYTES + 1)).unwrap_err());
        assert!(e.contains("65536 bytes long"), "{e}");
        assert!(e.len() < 400, "long values are shortened");
        let e = chain(&check_cmdline("a\0b").unwrap_err());
        assert_eq!(
            e,
            "--cmdline a\\u{0}b: the kernel command line contains a NUL byte at offset 1"
        );
    }

    #[test]
    fn files() {
        let e = check_readable_file("--kernel", Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(matches!(
            e.source().and_then(|s| s.source()).and_then(|s| s.downcast_ref::<io::Error>()),
            Some(io) if io.kind() == io::ErrorKind::NotFound
        ));
        assert!(chain(&e).starts_with("--kernel /nonexistent/vmlinux: cannot access the file: "));
        let e = chain(&check_readable_file("--initramfs", Path::new("/")).unwrap_err());
        assert_eq!(e, "--initramfs /: not a regular file (it is a directory)");
    }

    /// `parse_pci` over string literals.
    fn pci(platform: &str, segments: &[&str]) -> Result<PciConfig, ConfigError> {
        let segments: Vec<String> = segments.iter().map(|s| s.to_string()).collect();
        parse_pci(platform, &segments)
    }

    fn weights(mmio32: u32, mmio64: u32) -> PciSegmentConfig {
        PciSegmentConfig {
            mmio32_aperture_weight: mmio32,
            mmio64_aperture_weight: mmio64,
        }
    }

    #[test]
    fn pci_defaults() {
        assert_eq!(
            pci(crate::cli::DEFAULT_PLATFORM, &[]).unwrap(),
            PciConfig::default()
        );
        assert_eq!(pci("", &[]).unwrap().segments, [weights(1, 1)]);
        assert_eq!(
            pci("num_pci_segments=3", &[]).unwrap().segments,
            [weights(1, 1); 3]
        );
        assert_eq!(
            pci("num_pci_segments=96", &[]).unwrap().segments.len(),
            usize::from(MAX_PCI_SEGMENTS)
        );
        // pci_segment defaults to 0 and the weights to 1.
        assert_eq!(pci("", &[""]).unwrap().segments, [weights(1, 1)]);
        assert_eq!(
            pci("", &["mmio64_aperture_weight=7"]).unwrap().segments,
            [weights(1, 7)]
        );
    }

    #[test]
    fn pci_two_segments_two_to_one() {
        let config = pci(
            "num_pci_segments=2",
            &[
                "pci_segment=0,mmio32_aperture_weight=2,mmio64_aperture_weight=2",
                "pci_segment=1,mmio32_aperture_weight=1,mmio64_aperture_weight=1",
            ],
        )
        .unwrap();
        assert_eq!(
            config,
            PciConfig {
                segments: vec![weights(2, 2), weights(1, 1)],
                vfio_p2p_dma: true,
            }
        );
        assert!(!pci("vfio_p2p_dma=off", &[]).unwrap().vfio_p2p_dma);
        assert!(pci("vfio_p2p_dma=on", &[]).unwrap().vfio_p2p_dma);
    }

    #[test]
    fn pci_values_from_several_and_repeated_flags() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "viaduct",
            "--pci-segment",
            "pci_segment=3,mmio32_aperture_weight=4",
            "pci_segment=1,mmio64_aperture_weight=5",
            "--kernel",
            "k",
            "--pci-segment",
            "mmio32_aperture_weight=2",
            "--platform",
            "num_pci_segments=4",
            "--pci-segment",
            "pci_segment=2,mmio32_aperture_weight=4294967295",
            "pci_segment=\"2\"x",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        // The last value is bad on purpose: every value is checked, wherever it came from.
        let e = chain(&parse_pci(&cli.platform, &cli.pci_segments).unwrap_err());
        assert!(e.starts_with("--pci-segment pci_segment=\"2\"x: "), "{e}");
        let good = &cli.pci_segments[..cli.pci_segments.len() - 1];
        assert_eq!(
            parse_pci(&cli.platform, good).unwrap().segments,
            [
                weights(2, 1),
                weights(1, 5),
                weights(u32::MAX, 1),
                weights(4, 1)
            ]
        );
    }

    #[test]
    fn platform_errors() {
        for (bad, want) in [
            (
                "num_pci_segments=0",
                "--platform num_pci_segments=0: the number of PCI segments must be between 1 and \
                 96, not 0",
            ),
            (
                "num_pci_segments=97",
                "--platform num_pci_segments=97: the number of PCI segments must be between 1 and \
                 96, not 97",
            ),
            (
                "num_pci_segments=99999999999999999999",
                "--platform num_pci_segments=99999999999999999999: num_pci_segments: \
                 \"99999999999999999999\" is not a valid integer",
            ),
            (
                "num_pci_segments=abc",
                "--platform num_pci_segments=abc: num_pci_segments: \"abc\" is not a valid integer",
            ),
            (
                "foo=1",
                "--platform foo=1: unknown key \"foo\" (supported keys: num_pci_segments, vfio_p2p_dma)",
            ),
            (
                "num_pci_segments=2,num_pci_segments=3",
                "--platform num_pci_segments=2,num_pci_segments=3: key \"num_pci_segments\" is \
                 given more than once",
            ),
            ("2", "--platform 2: \"2\" is not of the form key=value"),
        ] {
            let e = chain(&pci(bad, &[]).unwrap_err());
            assert!(e.starts_with(want), "{e}");
        }
        for key in [
            "iommu_segments=[0]",
            "iommu_address_width=48",
            "iommufd=on",
            "iommufd_fd=3",
            "serial_number=x",
            "uuid=x",
            "oem_strings=[a]",
            "system_manufacturer=x",
            "chassis_asset_tag=x",
        ] {
            let value = format!("num_pci_segments=2,{key}");
            let e = chain(&pci(&value, &[]).unwrap_err());
            assert!(e.starts_with(&format!("--platform {value}: key \"")), "{e}");
            assert!(
                e.ends_with(
                    "is a cloud-hypervisor option that viaduct does not support (supported keys: \
                     num_pci_segments, vfio_p2p_dma)"
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn pci_segment_errors() {
        for (platform, values, want) in [
            (
                "",
                &["pci_segment=0,mmio32_aperture_weight=0"][..],
                "--pci-segment pci_segment=0,mmio32_aperture_weight=0: mmio32_aperture_weight \
                 must be at least 1 (weights are relative shares of the aperture)",
            ),
            (
                "",
                &["mmio64_aperture_weight=0"],
                "--pci-segment mmio64_aperture_weight=0: mmio64_aperture_weight must be at least 1",
            ),
            (
                "",
                &["mmio64_aperture_weight=x"],
                "--pci-segment mmio64_aperture_weight=x: mmio64_aperture_weight: \"x\" is not a \
                 valid integer",
            ),
            (
                "",
                &["mmio32_aperture_weight=4294967296"],
                "--pci-segment mmio32_aperture_weight=4294967296: mmio32_aperture_weight: \
                 \"4294967296\" is not a valid integer",
            ),
            (
                "",
                &["pci_segment=-1"],
                "--pci-segment pci_segment=-1: pci_segment: \"-1\" is not a valid integer",
            ),
            (
                "num_pci_segments=2",
                &["pci_segment=2"],
                "--pci-segment pci_segment=2: PCI segment 2 does not exist: the VM has 2 PCI \
                 segments (0 to 1); add --platform num_pci_segments=3 to create it",
            ),
            (
                "",
                &["pci_segment=1"],
                "--pci-segment pci_segment=1: PCI segment 1 does not exist: the VM has 1 PCI \
                 segment (0); add --platform num_pci_segments=2 to create it",
            ),
            (
                "num_pci_segments=96",
                &["pci_segment=96"],
                "--pci-segment pci_segment=96: PCI segment 96 does not exist: the VM has 96 PCI \
                 segments (0 to 95); viaduct supports at most 96 segments (0 to 95)",
            ),
            (
                "num_pci_segments=2",
                &["pci_segment=1,mmio32_aperture_weight=2", "pci_segment=1"],
                "--pci-segment pci_segment=1: PCI segment 1 is already configured by \
                 --pci-segment pci_segment=1,mmio32_aperture_weight=2; give each segment once",
            ),
            (
                "",
                &["mmio32_aperture_weight=3", "pci_segment=0"],
                "--pci-segment pci_segment=0: PCI segment 0 is already configured by \
                 --pci-segment mmio32_aperture_weight=3 (a value without pci_segment= configures \
                 segment 0); give each segment once",
            ),
            (
                "",
                &["pci_segment=0,bogus=1"],
                "--pci-segment pci_segment=0,bogus=1: unknown key \"bogus\" (supported keys: \
                 pci_segment, mmio32_aperture_weight, mmio64_aperture_weight)",
            ),
            (
                "",
                &["pci_segment=0,pci_segment=0"],
                "--pci-segment pci_segment=0,pci_segment=0: key \"pci_segment\" is given more \
                 than once",
            ),
            (
                "",
                &["0"],
                "--pci-segment 0: \"0\" is not of the form key=value",
            ),
        ] {
            let e = chain(&pci(platform, values).unwrap_err());
            assert!(e.starts_with(want), "{platform:?} {values:?}:\n{e}\n{want}");
            assert_eq!(
                pci(platform, values).unwrap_err().flag(),
                "--pci-segment",
                "{e}"
            );
        }
        // A bad --platform is reported before (and instead of) the --pci-segment values.
        let e = pci("num_pci_segments=0", &["pci_segment=5"]).unwrap_err();
        assert_eq!(e.flag(), "--platform");
    }

    #[test]
    fn printable_values() {
        assert_eq!(printable("a\nb"), "a\\nb");
        assert_eq!(printable(&"x".repeat(300)).len(), 203);
    }

    /// A scratch directory standing in for sysfs: `dev0`, `dev1`, `dev2` are device directories,
    /// `file` a regular file and `link0` a symlink to `dev0`. Removed on drop.
    struct FakeSysfs {
        dir: PathBuf,
    }

    impl FakeSysfs {
        fn new() -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "viaduct-device-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            for name in ["dev0", "dev1", "dev2"] {
                fs::create_dir_all(dir.join(name)).unwrap();
            }
            fs::write(dir.join("file"), b"not a device").unwrap();
            std::os::unix::fs::symlink(dir.join("dev0"), dir.join("link0")).unwrap();
            Self { dir }
        }

        /// The path of `name` in the scratch directory, as a string.
        fn path(&self, name: &str) -> String {
            self.dir.join(name).display().to_string()
        }
    }

    impl Drop for FakeSysfs {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    /// `parse_devices` over `values`, with `segments` PCI segments.
    fn devices(
        values: &[String],
        segments: usize,
    ) -> Result<Vec<PassthroughDeviceConfig>, ConfigError> {
        parse_devices(values, segments)
    }

    #[test]
    fn device_minimal_and_full() {
        let sys = FakeSysfs::new();
        let dev0 = sys.path("dev0");
        let parsed = parse_device(&format!("path={dev0}")).unwrap();
        assert_eq!(parsed.path, PathBuf::from(&dev0));
        assert_eq!(parsed.resolved, fs::canonicalize(&dev0).unwrap());
        assert_eq!(parsed.segment, 0);
        assert_eq!(parsed.gpudirect_clique, None);
        assert_eq!(parsed.id, None);

        let value = format!("id=gpu0,x_nv_gpudirect_clique=15,pci_segment=2,path={dev0}/");
        let got = devices(&[value], 3).unwrap();
        assert_eq!(
            got,
            [PassthroughDeviceConfig {
                path: PathBuf::from(format!("{dev0}/")),
                pci_segment: 2,
                id: Some("gpu0".into()),
                gpudirect_clique: Some(15),
                managed: false,
            }]
        );
        // Quotes allow commas in the id; printable non-ASCII is fine.
        let got = devices(
            &[format!("path={dev0},id=\"a,b ü\",x_nv_gpudirect_clique=0")],
            1,
        )
        .unwrap();
        assert_eq!(got[0].id.as_deref(), Some("a,b ü"));
        assert_eq!(got[0].gpudirect_clique, Some(0));
    }

    #[test]
    fn devices_keep_command_line_order() {
        use clap::Parser;
        let sys = FakeSysfs::new();
        let (dev0, dev1, dev2) = (sys.path("dev0"), sys.path("dev1"), sys.path("dev2"));
        let first = format!("path={dev2},id=c");
        let second = format!("path={dev0},pci_segment=1,x_nv_gpudirect_clique=3");
        let third = format!("path={dev1}");
        let cli = Cli::try_parse_from([
            "viaduct",
            "--device",
            &first,
            &second,
            "--platform",
            "num_pci_segments=2",
            "--device",
            &third,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let pci = parse_pci(&cli.platform, &cli.pci_segments).unwrap();
        let got = parse_devices(&cli.devices, pci.segments.len()).unwrap();
        let paths: Vec<_> = got.iter().map(|d| d.path.display().to_string()).collect();
        assert_eq!(paths, [dev2, dev0, dev1]);
        assert_eq!(
            got.iter().map(|d| d.pci_segment).collect::<Vec<_>>(),
            [0, 1, 0]
        );
        assert_eq!(got[0].id.as_deref(), Some("c"));
        assert_eq!(got[1].gpudirect_clique, Some(3));
        assert!(devices(&[], 1).unwrap().is_empty());
    }

    #[test]
    fn device_path_errors() {
        let sys = FakeSysfs::new();
        let missing = sys.path("nope");
        let file = sys.path("file");
        for (value, want) in [
            (
                "id=gpu0".to_string(),
                "--device id=gpu0: path= is required: give the device's sysfs directory, e.g. \
                 path=/sys/bus/pci/devices/0000:01:00.0 (list devices with `ls \
                 /sys/bus/pci/devices`)"
                    .to_string(),
            ),
            (
                "path=,id=gpu0".to_string(),
                "--device path=,id=gpu0: path= is required".to_string(),
            ),
            (
                format!("path={missing}"),
                format!(
                    "--device path={missing}: no such device: {missing}; list devices with `ls \
                     /sys/bus/pci/devices`"
                ),
            ),
            (
                format!("path={file}"),
                format!(
                    "--device path={file}: {file} is not a device directory (it is a regular \
                     file); give the device's sysfs directory, e.g. \
                     /sys/bus/pci/devices/0000:01:00.0"
                ),
            ),
            (
                "path=/dev/null".to_string(),
                "--device path=/dev/null: /dev/null is not a device directory (it is a character \
                 device)"
                    .to_string(),
            ),
        ] {
            let e = devices(std::slice::from_ref(&value), 1).unwrap_err();
            assert_eq!(e.flag(), "--device");
            let e = chain(&e);
            assert!(e.starts_with(&want), "{e}\n{want}");
        }
    }

    #[test]
    fn device_value_errors() {
        let sys = FakeSysfs::new();
        let dev0 = sys.path("dev0");
        let clique = "x_nv_gpudirect_clique must be a whole number from 0 to 15";
        let four_bits = "the clique id is a 4-bit field of the NVIDIA GPUDirect P2P capability";
        for (rest, want) in [
            (
                "x_nv_gpudirect_clique=16",
                format!("{clique}, not \"16\": {four_bits}"),
            ),
            (
                "x_nv_gpudirect_clique=255",
                format!("{clique}, not \"255\""),
            ),
            (
                "x_nv_gpudirect_clique=256",
                format!("{clique}, not \"256\""),
            ),
            ("x_nv_gpudirect_clique=-1", format!("{clique}, not \"-1\"")),
            ("x_nv_gpudirect_clique=x", format!("{clique}, not \"x\"")),
            ("x_nv_gpudirect_clique=", format!("{clique}, not \"\"")),
            (
                "pci_segment=x",
                "pci_segment: \"x\" is not a valid integer".to_string(),
            ),
            (
                "pci_segment=1",
                "PCI segment 1 does not exist: the VM has 1 PCI segment (0); add --platform \
                 num_pci_segments=2 to create it"
                    .to_string(),
            ),
            (
                "pci_segment=70000",
                "PCI segment 70000 does not exist: the VM has 1 PCI segment (0); viaduct \
                 supports at most 96 segments (0 to 95)"
                    .to_string(),
            ),
            (
                "id=",
                "id= must not be empty; leave id out to name the device after its sysfs \
                 directory"
                    .to_string(),
            ),
            (
                "id=a\tb",
                "id must consist of printable characters".to_string(),
            ),
            (
                "iommu=on",
                "key \"iommu\" is a cloud-hypervisor option that viaduct does not support \
                 (supported keys: path, pci_segment, x_nv_gpudirect_clique, id, managed)"
                    .to_string(),
            ),
            (
                "fd=3",
                "key \"fd\" is a cloud-hypervisor option".to_string(),
            ),
            (
                "pci_device_id=3",
                "key \"pci_device_id\" is a cloud-hypervisor option".to_string(),
            ),
            (
                "x_exclude_mmap_bars=[0,1]",
                "key \"x_exclude_mmap_bars\" is a cloud-hypervisor option".to_string(),
            ),
            (
                "bogus=1",
                "unknown key \"bogus\" (supported keys: path, pci_segment, \
                 x_nv_gpudirect_clique, id, managed)"
                    .to_string(),
            ),
            (
                "id=a,id=b",
                "key \"id\" is given more than once".to_string(),
            ),
        ] {
            let value = format!("path={dev0},{rest}");
            let e = devices(std::slice::from_ref(&value), 1).unwrap_err();
            assert_eq!(e.flag(), "--device");
            let e = chain(&e);
            let value = printable(&value);
            assert!(
                e.starts_with(&format!("--device {value}: {want}")),
                "{e}\n{want}"
            );
        }
        // Valid clique bounds and the last segment.
        let ok = [
            format!("path={dev0},x_nv_gpudirect_clique=0,pci_segment=95"),
            format!("path={},x_nv_gpudirect_clique=15", sys.path("dev1")),
        ];
        assert_eq!(devices(&ok, 96).unwrap().len(), 2);
    }

    #[test]
    fn device_given_twice() {
        let sys = FakeSysfs::new();
        let (dev0, link0) = (sys.path("dev0"), sys.path("link0"));
        let canonical = fs::canonicalize(&dev0).unwrap().display().to_string();
        // The same spelling, a trailing slash, a doubled slash or "/." are the same device.
        for second in [
            format!("path={dev0}"),
            format!("path={dev0}/"),
            format!("path={dev0}/."),
            format!("path={}//dev0", sys.dir.display()),
        ] {
            let values = [format!("path={dev0},id=a"), second.clone()];
            let e = chain(&devices(&values, 1).unwrap_err());
            let path = second.strip_prefix("path=").unwrap();
            let want = format!(
                "--device {second}: device {path} is already passed through by --device \
                 path={dev0},id=a; give each device once"
            );
            assert_eq!(e, want);
        }
        // Through a symlink: the message shows what both resolve to.
        let values = [format!("path={link0}"), format!("path={dev0}/")];
        let e = chain(&devices(&values, 1).unwrap_err());
        assert_eq!(
            e,
            format!(
                "--device path={dev0}/: device {dev0}/ is already passed through by --device \
                 path={link0} (both resolve to {canonical}); give each device once"
            )
        );
    }

    #[test]
    fn device_id_given_twice() {
        let sys = FakeSysfs::new();
        let (dev0, dev1, dev2) = (sys.path("dev0"), sys.path("dev1"), sys.path("dev2"));
        let values = [
            format!("path={dev0},id=gpu"),
            format!("path={dev1}"),
            format!("path={dev2},id=gpu"),
        ];
        let e = devices(&values, 1).unwrap_err();
        assert_eq!(e.flag(), "--device");
        assert_eq!(
            chain(&e),
            format!(
                "--device path={dev2},id=gpu: id \"gpu\" is already used by --device \
                 path={dev0},id=gpu; give each device its own id"
            )
        );
        // Ids differing only in case are different ids.
        let values = [format!("path={dev0},id=gpu"), format!("path={dev1},id=GPU")];
        assert_eq!(devices(&values, 1).unwrap().len(), 2);
    }

    #[test]
    fn device_errors_in_command_line_order() {
        let sys = FakeSysfs::new();
        // The first bad value is reported, whichever check it fails.
        let values = [
            format!("path={}", sys.path("dev0")),
            format!("path={},pci_segment=1", sys.path("dev1")),
            format!("path={}", sys.path("nope")),
        ];
        let e = chain(&devices(&values, 1).unwrap_err());
        assert!(e.contains("PCI segment 1 does not exist"), "{e}");
    }
}
