//! `--disk path=FILE[,readonly=on|off][,image_type=raw|qcow2][,backing_files=on|off]
//! [,num_queues=N][,queue_size=N][,pci_segment=K][,id=NAME][,serial=S]`: virtio-blk disks,
//! checked into [`DiskConfig`]s.
//!
//! The file must exist and be a regular file or a block device, and must open for reading (and
//! for writing too, unless `readonly=on`); `serial` is at most 20 printable ASCII bytes (the
//! virtio-blk serial field), and so is `id` when there is no `serial` (it is the serial then);
//! `id` is unique among disks; `pci_segment` is below the number of segments. The image is then
//! opened as the VM will open it (`vmm::disks::probe`), so a format viaduct cannot serve (VHD,
//! VHDX, VMDK, an encrypted qcow2, …), a qcow2 backing file without `backing_files=on` or an
//! image in use by another VM is refused here, before anything starts. cloud-hypervisor's
//! other `--disk` keys are rejected as unsupported.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use vmm::config::{BlockError, DiskConfig, ImageError, ImageType};

use crate::config::{checked_segment, ConfigError, InvalidValue};
use crate::options::OptionSpec;

/// Longest `serial=`, in bytes: the size of virtio-blk's serial (`VIRTIO_BLK_ID_BYTES`).
pub const MAX_SERIAL_BYTES: usize = 20;
/// Request queues unless `num_queues=` says otherwise (cloud-hypervisor's default).
pub const DEFAULT_NUM_QUEUES: u16 = 1;

/// `--disk` keys, and the cloud-hypervisor ones viaduct does not implement.
const DISK: OptionSpec = OptionSpec::new(&[
    "path",
    "readonly",
    "pci_segment",
    "id",
    "serial",
    "image_type",
    "backing_files",
    "num_queues",
    "queue_size",
])
.unsupported(&[
    "direct",
    "iommu",
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
    /// `image_type` other than raw or qcow2.
    #[error(
        "image_type={0} is not supported: viaduct serves raw and qcow2 images (convert with \
         `qemu-img convert -O qcow2`)"
    )]
    ImageType(String),
    /// No `serial=`, and an `id=` too long (or not ASCII) to be the serial.
    #[error(
        "id \"{0}\" is also the disk's virtio serial when serial= is not given, and a serial \
         holds at most {MAX_SERIAL_BYTES} printable ASCII bytes; give serial= (at most \
         {MAX_SERIAL_BYTES} bytes) or a shorter id"
    )]
    IdNotASerial(String),
    /// `backing_files=on` without `image_type=qcow2`.
    #[error(
        "backing_files=on needs image_type=qcow2: viaduct follows a backing file only in an \
         image declared qcow2, never in one whose format it guessed (a guest may have written \
         that header)"
    )]
    BackingFilesNeedQcow2,
    /// `num_queues` out of range.
    #[error("num_queues={0}: want 1 to {max} request queues", max = vmm::config::MAX_DISK_QUEUES)]
    NumQueues(u16),
    /// `queue_size` not a power of two in range.
    #[error(
        "queue_size={0}: want a power of two from 2 to {max}",
        max = vmm::config::MAX_DISK_QUEUE_SIZE
    )]
    QueueSize(u16),
    /// The image's format cannot be served.
    #[error(transparent)]
    Image(ImageError),
    /// The disk cannot be opened as the VM would (locked, too small, …).
    #[error(transparent)]
    Unusable(BlockError),
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
    let image_type = match options.get("image_type") {
        None => None,
        Some(t) if t.eq_ignore_ascii_case("raw") => Some(ImageType::Raw),
        Some(t) if t.eq_ignore_ascii_case("qcow2") => Some(ImageType::Qcow2),
        Some(t) => return Err(disk(DiskError::ImageType(t.to_string()))),
    };
    let backing_files = options
        .get_toggle("backing_files")
        .map_err(|e| invalid(e.into()))?
        .unwrap_or(false);
    if backing_files && image_type != Some(ImageType::Qcow2) {
        return Err(disk(DiskError::BackingFilesNeedQcow2));
    }
    let num_queues = options
        .get_int::<u16>("num_queues")
        .map_err(|e| invalid(e.into()))?
        .unwrap_or(DEFAULT_NUM_QUEUES);
    if !(1..=vmm::config::MAX_DISK_QUEUES).contains(&num_queues) {
        return Err(disk(DiskError::NumQueues(num_queues)));
    }
    let queue_size = options
        .get_int::<u16>("queue_size")
        .map_err(|e| invalid(e.into()))?
        .unwrap_or(vmm::config::DEFAULT_DISK_QUEUE_SIZE);
    if queue_size < 2
        || !queue_size.is_power_of_two()
        || queue_size > vmm::config::MAX_DISK_QUEUE_SIZE
    {
        return Err(disk(DiskError::QueueSize(queue_size)));
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
    let fits_a_serial = |s: &str| s.bytes().all(|b| (0x20..0x7f).contains(&b));
    if let Some(s) = serial.as_deref() {
        if s.len() > MAX_SERIAL_BYTES {
            return Err(disk(DiskError::SerialTooLong(s.len())));
        }
        if !fits_a_serial(s) {
            return Err(disk(DiskError::SerialNotPrintable));
        }
    } else if let Some(i) = id.as_deref() {
        // The id is the serial then (cloud-hypervisor refuses a serial over 20 bytes too).
        if i.len() > MAX_SERIAL_BYTES || !fits_a_serial(i) {
            return Err(disk(DiskError::IdNotASerial(i.to_string())));
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
    let config = DiskConfig {
        path,
        readonly,
        pci_segment: 0,
        id,
        serial,
        image_type,
        backing_files,
        num_queues,
        queue_size,
    };
    vmm::disks::probe(&config).map_err(|e| match e {
        BlockError::Image { source, .. } => disk(DiskError::Image(source)),
        other => disk(DiskError::Unusable(other)),
    })?;
    Ok(DiskValue {
        config,
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
                    serial: None,
                    image_type: None,
                    backing_files: false,
                    num_queues: 1,
                    queue_size: 256,
                },
                DiskConfig {
                    path: d.0.join("b.img"),
                    readonly: true,
                    pci_segment: 1,
                    id: Some("data".into()),
                    serial: Some("SN-0001".into()),
                    image_type: Some(ImageType::Raw),
                    backing_files: false,
                    num_queues: 1,
                    queue_size: 256,
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
                "is also the disk's virtio serial when serial= is not given",
            ),
            (
                format!("path={a},direct=on"),
                "cloud-hypervisor option that viaduct does not support",
            ),
            (format!("path={a},vhost_user=on"), "does not support"),
            (
                format!("path={a},image_type=vhdx"),
                "image_type=vhdx is not supported: viaduct serves raw and qcow2 images",
            ),
            (
                format!("path={a},image_type=qcow2"),
                "is not a qcow2 image (no qcow2 magic at its start)",
            ),
            (
                format!("path={a},backing_files=on"),
                "backing_files=on needs image_type=qcow2",
            ),
            (
                format!("path={a},num_queues=0"),
                "num_queues=0: want 1 to 255",
            ),
            (format!("path={a},num_queues=256"), "num_queues=256"),
            (
                format!("path={a},queue_size=100"),
                "queue_size=100: want a power",
            ),
            (format!("path={a},queue_size=65536"), "queue_size"),
            (
                format!("path={a},id=a-very-long-disk-name-01"),
                "id \"a-very-long-disk-name-01\" is also the disk's virtio serial",
            ),
            (format!("path={a},id=disque-é"), "give serial="),
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
    fn a_long_id_is_fine_with_a_serial() {
        let d = Dir::new();
        let got = disks(
            &[format!(
                "path={},id=a-very-long-disk-name-01,serial=short,num_queues=4,queue_size=128",
                d.p("a.img")
            )],
            1,
        )
        .unwrap();
        assert_eq!(got[0].id.as_deref(), Some("a-very-long-disk-name-01"));
        assert_eq!((got[0].num_queues, got[0].queue_size), (4, 128));
    }

    /// Writes `head` at the start of a 64 KiB file named `name`.
    fn image_with(d: &Dir, name: &str, head: &[u8]) -> String {
        let mut bytes = vec![0u8; 64 << 10];
        bytes[..head.len()].copy_from_slice(head);
        fs::write(d.0.join(name), bytes).unwrap();
        d.p(name)
    }

    fn qcow2_header(version: u32) -> Vec<u8> {
        let mut h = b"QFI\xfb".to_vec();
        h.extend(version.to_be_bytes());
        h.resize(1024, 0);
        h
    }

    #[test]
    fn images_viaduct_cannot_serve_are_refused_with_one_line() {
        let d = Dir::new();
        let mut encrypted = qcow2_header(3);
        encrypted[32..36].copy_from_slice(&1u32.to_be_bytes());
        let mut overlay = qcow2_header(3);
        overlay[8..16].copy_from_slice(&512u64.to_be_bytes());
        overlay[16..20].copy_from_slice(&8u32.to_be_bytes());
        overlay[512..520].copy_from_slice(b"base.img");
        let cases = [
            (image_with(&d, "x.vhdx", b"vhdxfile"), "is a VHDX image, which viaduct cannot serve; convert it with `qemu-img convert -O qcow2`"),
            (image_with(&d, "x.vmdk", b"KDMV"), "is a VMDK (sparse) image"),
            (image_with(&d, "x.vdi", &[b"<<< Oracle VM VirtualBox Disk Image >>>\n".as_slice(), &[0; 24], &0xbeda_107f_u32.to_le_bytes()].concat()), "is a VDI image"),
            (image_with(&d, "x.qed", b"QED\0"), "is a QED image"),
            (image_with(&d, "x.luks", b"LUKS\xba\xbe"), "is a LUKS image"),
            (image_with(&d, "x.qcow", &qcow2_header(1)), "is a qcow (version 1) image"),
            (image_with(&d, "enc.qcow2", &encrypted), "is encrypted (AES)"),
            (image_with(&d, "ov.qcow2", &overlay), "has the backing file \"base.img\"; give backing_files=on"),
        ];
        for (path, want) in cases {
            let err = disks(&[format!("path={path}")], 1).unwrap_err();
            assert!(err.contains(want), "{path}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        // A fixed VHD's footer is at the end.
        let mut vhd = vec![0u8; 64 << 10];
        let at = vhd.len() - 512;
        vhd[at..at + 8].copy_from_slice(b"conectix");
        fs::write(d.0.join("fixed.vhd"), vhd).unwrap();
        let err = disks(&[format!("path={}", d.p("fixed.vhd"))], 1).unwrap_err();
        assert!(err.contains("is a VHD (fixed) image"), "{err}");
        // image_type=raw serves any bytes as they are.
        let vhdx = d.p("x.vhdx");
        let got = disks(&[format!("path={vhdx},image_type=raw")], 1).unwrap();
        assert_eq!(got[0].image_type, Some(ImageType::Raw));
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
