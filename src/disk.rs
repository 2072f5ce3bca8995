//! `--disk path=FILE[,readonly=on|off][,pci_segment=K][,id=NAME][,serial=S]`: virtio-blk disks,
//! checked into [`DiskConfig`]s.
//!
//! The file must exist and be a regular file or a block device, and must open for reading (and
//! for writing too, unless `readonly=on`); `serial` is at most 20 printable ASCII bytes (the
//! virtio-blk serial field); `id` is unique among disks; `pci_segment` is below the number of
//! segments. cloud-hypervisor's other `--disk` keys are rejected as unsupported, except
//! `image_type=raw`, which is what viaduct reads anyway.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use vmm::config::DiskConfig;

use crate::config::{checked_segment, ConfigError, InvalidValue};
use crate::options::OptionSpec;

/// Longest `serial=`, in bytes: the size of virtio-blk's serial (`VIRTIO_BLK_ID_BYTES`).
pub const MAX_SERIAL_BYTES: usize = 20;

/// `--disk` keys, and the cloud-hypervisor ones viaduct does not implement.
const DISK: OptionSpec = OptionSpec::new(&[
    "path",
    "readonly",
    "pci_segment",
    "id",
    "serial",
    "image_type",
])
.unsupported(&[
    "direct",
    "iommu",
    "num_queues",
    "queue_size",
    "vhost_user",
    "socket",
    "bw_size",
    "bw_one_time_burst",
    "bw_refill_time",
    "ops_size",
    "ops_one_time_burst",
    "ops_refill_time",
    "rate_limit_group",
    "queue_affinity",
    "pci_device_id",
    "backing_files",
    "sparse",
    "_disable_io_uring",
    "_disable_aio",
]);

/// Why a `--disk` value was rejected.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// No `path=`.
    #[error("path= is required: give the raw disk image or block device, e.g. path=disk.img")]
    PathMissing,
    /// `stat` failed.
    #[error("cannot access {path}")]
    Access {
        /// The path, printable.
        path: String,
        /// What `stat` said.
        #[source]
        source: io::Error,
    },
    /// Not a regular file or block device.
    #[error("{path} is {kind}, not a raw disk image (a regular file) or a block device")]
    NotADisk {
        /// The path, printable.
        path: String,
        /// What it is.
        kind: &'static str,
    },
    /// Cannot be opened as needed.
    #[error("cannot open {path} for {mode}{hint}")]
    Open {
        /// The path, printable.
        path: String,
        /// "reading" or "reading and writing".
        mode: &'static str,
        /// A remedy, may be empty.
        hint: &'static str,
        /// What `open` said.
        #[source]
        source: io::Error,
    },
    /// `serial=` too long.
    #[error(
        "serial is {0} bytes long; the virtio-blk serial holds at most {MAX_SERIAL_BYTES} bytes"
    )]
    SerialTooLong(usize),
    /// `serial=` with non-printable bytes.
    #[error("serial must be printable ASCII (letters, digits, punctuation, spaces)")]
    SerialNotPrintable,
    /// `id=` empty.
    #[error("id= must not be empty; leave id out to have none")]
    IdEmpty,
    /// `id=` not printable.
    #[error("id must consist of printable characters")]
    IdNotPrintable,
    /// `id=` longer than a serial with no `serial=`: the id is the guest-visible serial then.
    #[error(
        "id is {0} bytes long and, without serial=, is also the disk's virtio-blk serial \
         (at most {MAX_SERIAL_BYTES} bytes): give a shorter id or a serial="
    )]
    IdTooLongForSerial(usize),
    /// Two disks with one id.
    #[error("id \"{id}\" is already used by --disk {first}; give each disk its own id")]
    DuplicateId {
        /// The id.
        id: String,
        /// The earlier value.
        first: String,
    },
    /// The same file twice, at least once writable.
    #[error(
        "{path} is already a disk (--disk {first}); one file may back two disks only if both \
         are readonly=on"
    )]
    DuplicateFile {
        /// The path, printable.
        path: String,
        /// The earlier value.
        first: String,
    },
    /// `image_type` other than raw.
    #[error(
        "image_type={0} is not supported: viaduct reads raw images only (convert with `qemu-img \
         convert -O raw`), and image_type=raw is the only value accepted"
    )]
    ImageType(String),
}

/// One checked `--disk` value, before it is checked against the others.
struct DiskValue {
    config: DiskConfig,
    segment: u64,
    resolved: PathBuf,
}

fn file_kind(t: &fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
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

fn parse_disk(value: &str) -> Result<DiskValue, ConfigError> {
    let invalid = |reason: InvalidValue| ConfigError::invalid("--disk", value, reason);
    let disk = |e: DiskError| invalid(InvalidValue::Disk(e));
    let options = DISK.parse(value).map_err(|e| invalid(e.into()))?;
    let path = match options.get("path") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => return Err(disk(DiskError::PathMissing)),
    };
    if let Some(t) = options.get("image_type") {
        if !t.eq_ignore_ascii_case("raw") {
            return Err(disk(DiskError::ImageType(t.to_string())));
        }
    }
    let readonly = options
        .get_toggle("readonly")
        .map_err(|e| invalid(e.into()))?
        .unwrap_or(false);
    let segment = options
        .get_int::<u64>("pci_segment")
        .map_err(|e| invalid(e.into()))?
        .unwrap_or(0);
    let id = options.get("id").map(str::to_string);
    match id.as_deref() {
        Some("") => return Err(disk(DiskError::IdEmpty)),
        Some(i) if i.chars().any(char::is_control) => return Err(disk(DiskError::IdNotPrintable)),
        _ => {}
    }
    let serial = options.get("serial").map(str::to_string);
    if let Some(s) = serial.as_deref() {
        if s.len() > MAX_SERIAL_BYTES {
            return Err(disk(DiskError::SerialTooLong(s.len())));
        }
        if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(disk(DiskError::SerialNotPrintable));
        }
    }
    // Found by the bad-input sweep: a long id passed here and failed when the VM built the disk.
    if let (None, Some(i)) = (&serial, &id) {
        if i.len() > MAX_SERIAL_BYTES {
            return Err(disk(DiskError::IdTooLongForSerial(i.len())));
        }
    }
    let shown = path.to_string_lossy().into_owned();
    let meta = fs::metadata(&path).map_err(|source| {
        disk(DiskError::Access {
            path: shown.clone(),
            source,
        })
    })?;
    let t = meta.file_type();
    if !t.is_file() && !t.is_block_device() {
        return Err(disk(DiskError::NotADisk {
            path: shown,
            kind: file_kind(&t),
        }));
    }
    let (mode, hint) = if readonly {
        ("reading", "")
    } else {
        (
            "reading and writing",
            " (give readonly=on to use it read-only)",
        )
    };
    OpenOptions::new()
        .read(true)
        .write(!readonly)
        .open(&path)
        .map_err(|source| {
            disk(DiskError::Open {
                path: shown.clone(),
                mode,
                hint,
                source,
            })
        })?;
    let resolved = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    Ok(DiskValue {
        config: DiskConfig {
            path,
            readonly,
            pci_segment: 0,
            id,
            serial,
        },
        segment,
        resolved,
    })
}

/// Builds the disk list from every `--disk` value, in command-line order.
pub fn parse_disks(
    values: &[String],
    num_pci_segments: usize,
) -> Result<Vec<DiskConfig>, ConfigError> {
    let count = u16::try_from(num_pci_segments).unwrap_or(u16::MAX);
    let mut seen: Vec<(&str, DiskValue)> = Vec::with_capacity(values.len());
    for value in values {
        let invalid = |reason: InvalidValue| ConfigError::invalid("--disk", value, reason);
        let mut parsed = parse_disk(value)?;
        parsed.config.pci_segment = checked_segment(parsed.segment, count).map_err(invalid)?;
        if let Some(id) = parsed.config.id.as_deref() {
            if let Some((first, _)) = seen
                .iter()
                .find(|(_, d)| d.config.id.as_deref() == Some(id))
            {
                return Err(invalid(InvalidValue::Disk(DiskError::DuplicateId {
                    id: id.to_string(),
                    first: first.to_string(),
                })));
            }
        }
        if let Some((first, _)) = seen.iter().find(|(_, d)| {
            d.resolved == parsed.resolved && !(d.config.readonly && parsed.config.readonly)
        }) {
            return Err(invalid(InvalidValue::Disk(DiskError::DuplicateFile {
                path: parsed.config.path.to_string_lossy().into_owned(),
                first: first.to_string(),
            })));
        }
        seen.push((value, parsed));
    }
    Ok(seen.into_iter().map(|(_, d)| d.config).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_chain;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let d = std::env::temp_dir().join(format!(
                "viaduct-disk-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("a.img"), vec![0u8; 4096]).unwrap();
            fs::write(d.join("b.img"), vec![0u8; 4096]).unwrap();
            Dir(d)
        }
        fn p(&self, name: &str) -> String {
            self.0.join(name).display().to_string()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn disks(values: &[String], segments: usize) -> Result<Vec<DiskConfig>, String> {
        parse_disks(values, segments).map_err(|e| error_chain(&e))
    }

    #[test]
    fn full_and_minimal_values() {
        let d = Dir::new();
        let got = disks(
            &[
                format!("path={}", d.p("a.img")),
                format!(
                    "path={},readonly=on,pci_segment=1,id=data,serial=SN-0001,image_type=raw",
                    d.p("b.img")
                ),
            ],
            2,
        )
        .unwrap();
        assert_eq!(
            got,
            [
                DiskConfig {
                    path: d.0.join("a.img"),
                    readonly: false,
                    pci_segment: 0,
                    id: None,
                    serial: None
                },
                DiskConfig {
                    path: d.0.join("b.img"),
                    readonly: true,
                    pci_segment: 1,
                    id: Some("data".into()),
                    serial: Some("SN-0001".into())
                }
            ]
        );
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let d = Dir::new();
        let a = d.p("a.img");
        let cases = [
            (format!("path={}", d.p("missing.img")), "cannot access"),
            (
                format!("path={}", d.0.display()),
                "is a directory, not a raw disk image",
            ),
            (
                format!("path={a},serial=012345678901234567890"),
                "serial is 21 bytes long",
            ),
            (format!("path={a},serial=a\u{1}b"), "printable ASCII"),
            (
                format!("path={a},id=abcdefghijklmnopqrstu"),
                "id is 21 bytes long and, without serial=",
            ),
            (
                format!("path={a},direct=on"),
                "cloud-hypervisor option that viaduct does not support",
            ),
            (format!("path={a},num_queues=4"), "does not support"),
            (
                format!("path={a},image_type=qcow2"),
                "image_type=qcow2 is not supported",
            ),
            (
                format!("path={a},pci_segment=1"),
                "PCI segment 1 does not exist",
            ),
            (
                format!("path={a},readonly=maybe"),
                "not on, off, true or false",
            ),
            (format!("path={a},id="), "id= must not be empty"),
            ("readonly=on".to_string(), "path= is required"),
        ];
        for (value, want) in cases {
            let err = disks(std::slice::from_ref(&value), 1).unwrap_err();
            assert!(
                err.starts_with(&format!("--disk {}", value.escape_default()))
                    || err.starts_with("--disk "),
                "{err}"
            );
            assert!(err.contains(want), "{value}: {err}");
        }
    }

    #[test]
    fn ids_and_writable_files_are_unique() {
        let d = Dir::new();
        let (a, b) = (d.p("a.img"), d.p("b.img"));
        let err = disks(&[format!("path={a},id=x"), format!("path={b},id=x")], 1).unwrap_err();
        assert!(
            err.contains("id \"x\" is already used by --disk path="),
            "{err}"
        );
        let err = disks(&[format!("path={a}"), format!("path={a},readonly=on")], 1).unwrap_err();
        assert!(err.contains("is already a disk"), "{err}");
        disks(
            &[
                format!("path={a},readonly=on"),
                format!("path={a},readonly=on"),
            ],
            1,
        )
        .unwrap();
    }

    #[test]
    fn read_only_file_needs_readonly_on() {
        use std::os::unix::fs::PermissionsExt;
        let d = Dir::new();
        let a = d.p("a.img");
        fs::set_permissions(&a, fs::Permissions::from_mode(0o444)).unwrap();
        // Root opens anything; the check only means something for other users.
        if fs::OpenOptions::new().write(true).open(&a).is_ok() {
            return;
        }
        let err = disks(&[format!("path={a}")], 1).unwrap_err();
        assert!(err.contains("cannot open"), "{err}");
        assert!(err.contains("give readonly=on"), "{err}");
        disks(&[format!("path={a},readonly=on")], 1).unwrap();
    }
}
