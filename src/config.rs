//! Turns the raw command-line values of [`Cli`] into a validated [`VmConfig`].
//!
//! Every rejected value becomes a [`ConfigError::Invalid`] naming the flag and the value as the
//! user wrote it; the reason is its [`std::error::Error::source`] (and the OS error below that,
//! for files), so a caller printing the chain joined with `": "` gets one line such as
//! `--memory size=0: memory size must be at least 16 MiB`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use vmm::config::{
    ConsoleMode, PciConfig, PciSegmentConfig, SerialMode, VmConfig, DEFAULT_APERTURE_WEIGHT,
    MAX_PCI_SEGMENTS, MAX_VCPUS, MIN_MEMORY_BYTES,
};

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
const MEMORY: OptionSpec = OptionSpec::new(&["size"])
    .unsupported(&[
        "mergeable",
        "shared",
        "hugepages",
        "hugepage_size",
        "hotplug_method",
        "hotplug_size",
        "hotplugged_size",
        "prefault",
        "thp",
        "zones",
    ])
    .default_key("size");

/// `--platform` keys.
const PLATFORM: OptionSpec = OptionSpec::new(&["num_pci_segments"]).unsupported(&[
    "iommu_segments",
    "iommu_address_width",
    "iommufd",
    "iommufd_fd",
    "vfio_p2p_dma",
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
    /// The serial output file cannot be created or opened for appending.
    #[error("cannot open the file for appending")]
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
    /// RAM that is not a whole number of 4 KiB pages.
    #[error("memory size ({0} bytes) must be a multiple of 4 KiB")]
    MemoryUnaligned(u64),
    /// A cloud-hypervisor serial mode viaduct does not implement.
    #[error("serial mode \"{0}\" is not supported by viaduct; use off, null, tty or file=PATH")]
    SerialUnsupported(&'static str),
    /// Not a serial mode at all.
    #[error("unknown serial mode; expected off, null, tty or file=PATH")]
    SerialUnknown,
    /// `file=` without a path.
    #[error("file= needs a path")]
    SerialEmptyPath,
    /// Any `--console` other than `off`/`null`.
    #[error(
        "the virtio console is not implemented; use --serial tty --console off to get the guest \
         console on the terminal"
    )]
    ConsoleNotImplemented,
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
}

/// Added to [`InvalidValue::DuplicatePciSegment`] when a value relies on the default segment.
const IMPLICIT_SEGMENT_NOTE: &str = " (a value without pci_segment= configures segment 0)";

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
    Ok(VmConfig {
        kernel: kernel.to_path_buf(),
        initramfs: cli.initramfs.clone(),
        cmdline,
        boot_vcpus: parse_cpus(&cli.cpus)?,
        memory_bytes: parse_memory(&cli.memory)?,
        serial: parse_serial(&cli.serial)?,
        console: parse_console(&cli.console)?,
        pci: parse_pci(&cli.platform, &cli.pci_segments)?,
        devices: Vec::new(),
    })
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
pub fn parse_memory(value: &str) -> Result<u64, ConfigError> {
    let invalid = |reason: InvalidValue| ConfigError::invalid("--memory", value, reason);
    let options = MEMORY.parse(value).map_err(|e| invalid(e.into()))?;
    let bytes = options
        .get_size("size")
        .map_err(|e| invalid(e.into()))?
        .unwrap_or(DEFAULT_MEMORY_BYTES);
    if bytes < MIN_MEMORY_BYTES {
        return Err(invalid(InvalidValue::MemoryTooSmall));
    }
    if !bytes.is_multiple_of(MEMORY_ALIGNMENT) {
        return Err(invalid(InvalidValue::MemoryUnaligned(bytes)));
    }
    Ok(bytes)
}

/// Parses `--serial off|null|tty|file=PATH`; for `file=` checks the file can be opened for
/// appending (creating it if needed).
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
                .append(true)
                .open(path)
                .map_err(|e| invalid(InvalidValue::FileUnwritable(e)))?;
            Ok(SerialMode::File(PathBuf::from(path)))
        }
    }
}

/// Parses `--console`: only `off` (and `null`, the same thing today) is accepted.
pub fn parse_console(value: &str) -> Result<ConsoleMode, ConfigError> {
    match value {
        "off" | "null" => Ok(ConsoleMode::Off),
        _ => Err(ConfigError::invalid(
            "--console",
            value,
            InvalidValue::ConsoleNotImplemented,
        )),
    }
}

/// Parses `--platform num_pci_segments=N` into the number of PCI segments.
pub fn parse_platform(value: &str) -> Result<u16, ConfigError> {
    let invalid = |reason: InvalidValue| ConfigError::invalid("--platform", value, reason);
    let options = PLATFORM.parse(value).map_err(|e| invalid(e.into()))?;
    let Some(count) = options
        .get_int::<u64>("num_pci_segments")
        .map_err(|e| invalid(e.into()))?
    else {
        return Ok(DEFAULT_NUM_PCI_SEGMENTS);
    };
    match u16::try_from(count) {
        Ok(n) if (1..=MAX_PCI_SEGMENTS).contains(&n) => Ok(n),
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
    let count = parse_platform(platform)?;
    let mut segments = vec![PciSegmentConfig::default(); usize::from(count)];
    // The value that configured each segment so far, and whether it named the segment.
    let mut seen: Vec<Option<(&str, bool)>> = vec![None; usize::from(count)];
    for value in pci_segments {
        let invalid = |reason: InvalidValue| ConfigError::invalid("--pci-segment", value, reason);
        let parsed = parse_pci_segment(value)?;
        let index = usize::try_from(parsed.segment)
            .ok()
            .filter(|&i| i < segments.len())
            .ok_or_else(|| {
                invalid(InvalidValue::PciSegmentOutOfRange {
                    segment: parsed.segment,
                    count,
                })
            })?;
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
    Ok(PciConfig { segments })
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
        assert_eq!(parse_memory("size=512M").unwrap(), 512 << 20);
        assert_eq!(parse_memory("size=2g").unwrap(), 2 << 30);
        assert_eq!(parse_memory("1G").unwrap(), 1 << 30);
        assert_eq!(parse_memory("size=16777216").unwrap(), 16 << 20);
        assert_eq!(
            chain(&parse_memory("size=0").unwrap_err()),
            "--memory size=0: memory size must be at least 16 MiB"
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
        assert!(parse_memory("size=1G,hugepages=on").is_err());
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
    fn console() {
        assert_eq!(parse_console("off").unwrap(), ConsoleMode::Off);
        assert_eq!(parse_console("null").unwrap(), ConsoleMode::Off);
        let e = chain(&parse_console("tty").unwrap_err());
        assert!(e.contains("--serial tty --console off"), "{e}");
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
                segments: vec![weights(2, 2), weights(1, 1)]
            }
        );
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
                "--platform foo=1: unknown key \"foo\" (supported keys: num_pci_segments)",
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
            "vfio_p2p_dma=off",
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
                     num_pci_segments)"
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
}
