//! virtio-blk backed by a raw image file, a host block device or a qcow2 image (module
//! `image`; the format from `image_type=` or the file's magic, module `format`).
//!
//! `num_queues` request queues (default 1) of `queue_size` entries (default 256), each served by
//! its own worker thread (module `worker`) started when the driver sets DRIVER_OK. Offered
//! features: VERSION_1, indirect descriptors, FLUSH (→ `fdatasync`), SEG_MAX, BLK_SIZE (512),
//! MQ with more than one queue, and RO for read-only disks. Requests: IN, OUT, FLUSH, GET_ID;
//! anything else completes with `VIRTIO_BLK_S_UNSUPP`. The image is locked with `flock` (shared
//! when read-only, exclusive otherwise) so two VMs cannot write it at once.

pub mod format;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod image;
mod request;
mod worker;

pub use self::image::{ImageError, ImageType, OpenedAs, MAX_BACKING_DEPTH};

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

use self::image::Backend;
use self::worker::Worker;
use crate::virtio::{
    features, ActivateError, ActiveQueue, GuestMemory, VirtioDevice, VirtioInterrupt,
};

/// Bytes per virtio-blk sector (fixed by the spec, whatever `blk_size` says).
pub const SECTOR_SIZE: u64 = 512;
/// Entries of each request queue unless `queue_size=` says otherwise.
pub const QUEUE_SIZE: u16 = 256;
/// Largest `queue_size=` (the split ring's limit).
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Most request queues (`num_queues=`): what the virtio-pci transport has doorbells and MSI-X
/// vectors for.
pub const MAX_QUEUES: u16 = crate::virtio::pci::layout::MAX_QUEUES as u16;
/// Most data segments per request the driver may use (`seg_max`): the default queue size minus
/// the header and status descriptors, as QEMU advertises. Indirect descriptors let a driver
/// use that many even on a smaller queue.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Logical block size advertised in `blk_size`.
pub const BLOCK_SIZE: u32 = 512;

/// Offsets in `struct virtio_blk_config`.
pub mod config_offset {
    /// le64: capacity in 512-byte sectors.
    pub const CAPACITY: usize = 0;
    /// le32: most segments per request.
    pub const SEG_MAX: usize = 12;
    /// le32: logical block size.
    pub const BLK_SIZE: usize = 20;
    /// le16: number of request queues (meaningful with VIRTIO_BLK_F_MQ).
    pub const NUM_QUEUES: usize = 34;
    /// Bytes of the structure we expose (through `num_queues`).
    pub const LEN: usize = 36;
}

/// What the VMM knows about one disk (`--disk path=…,readonly=…,id=…,serial=…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// The image file or host block device.
    pub path: PathBuf,
    /// `image_type=`: the format; None guesses it from the file's magic (see [`format`]).
    pub image_type: Option<ImageType>,
    /// `backing_files=on`: follow a qcow2 backing chain (only with `image_type` given).
    pub backing_files: bool,
    /// `num_queues=`: request queues, each with its own worker thread (1..=[`MAX_QUEUES`]).
    pub num_queues: u16,
    /// `queue_size=`: entries per queue (a power of two up to [`MAX_QUEUE_SIZE`]).
    pub queue_size: u16,
    /// Expose the disk read-only (writes complete with an I/O error).
    pub readonly: bool,
    /// Names the disk in messages; also the serial unless `serial` is set.
    pub id: Option<String>,
    /// The serial the guest reads (at most 20 bytes).
    pub serial: Option<String>,
}

/// Why a disk could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened.
    #[error("disk {disk}: cannot open {path}: {source}")]
    Open {
        /// The disk's id or path.
        disk: String,
        /// The image path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Another process holds a conflicting lock on the image.
    #[error(
        "disk {disk}: {path} is in use by another process (another VM?); \
         stop it or give this VM a copy"
    )]
    Locked {
        /// The disk's id or path.
        disk: String,
        /// The image path.
        path: PathBuf,
    },
    /// The size of the image could not be determined.
    #[error("disk {disk}: cannot determine the size of the image: {source}")]
    Size {
        /// The disk's id or path.
        disk: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The image holds less than one sector.
    #[error("disk {disk}: the image is {bytes} bytes, smaller than one {SECTOR_SIZE}-byte sector")]
    TooSmall {
        /// The disk's id or path.
        disk: String,
        /// Its size in bytes.
        bytes: u64,
    },
    /// The image's format cannot be served (or is not what `image_type=` said).
    #[error("disk {disk}")]
    Image {
        /// The disk's id or path.
        disk: String,
        /// Why.
        #[source]
        source: ImageError,
    },
    /// `num_queues` or `queue_size` out of range.
    #[error(
        "disk {disk}: num_queues={num_queues}, queue_size={queue_size}: want 1 to {MAX_QUEUES} \
         queues of a power of two entries up to {MAX_QUEUE_SIZE}"
    )]
    Queues {
        /// The disk's id or path.
        disk: String,
        /// As given.
        num_queues: u16,
        /// As given.
        queue_size: u16,
    },
    /// The serial does not fit the 20 bytes virtio-blk has for it.
    #[error("disk {disk}: serial {serial:?} is {len} bytes; virtio-blk allows at most 20")]
    SerialTooLong {
        /// The disk's id or path.
        disk: String,
        /// The serial as given.
        serial: String,
        /// Its length in bytes.
        len: usize,
    },
}

/// The backing store, shared with the worker threads.
pub(crate) struct Disk {
    name: String,
    backend: Backend,
    readonly: bool,
    capacity_sectors: u64,
    serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
    /// Called by a worker after each completed request (tests play a driver with it).
    #[cfg(test)]
    after_request: Option<Box<dyn Fn() + Send + Sync>>,
}

/// A virtio-blk device (type 2): implement the transport-independent half of the device.
pub struct VirtioBlock {
    disk: Arc<Disk>,
    opened_as: OpenedAs,
    features: u64,
    queue_sizes: Vec<u16>,
    config: [u8; config_offset::LEN],
    workers: Vec<Worker>,
}

impl VirtioBlock {
    /// Opens and locks `config.path` (read-only when `config.readonly`).
    pub fn open(config: &BlockConfig) -> Result<Self, BlockError> {
        let disk = match &config.id {
            Some(id) => id.clone(),
            None => config.path.display().to_string(),
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!config.readonly)
            .open(&config.path)
            .map_err(|source| BlockError::Open {
                disk: disk.clone(),
                path: config.path.clone(),
                source,
            })?;
        let mode = if config.readonly {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a file descriptor we own, no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) } != 0 {
            return Err(BlockError::Locked {
                disk,
                path: config.path.clone(),
            });
        }
        let serial = config.serial.as_deref().or(config.id.as_deref());
        Self::from_file_as(file, disk, config, serial)
    }

    /// Wraps an already-open raw `file` named `name` in messages, with the guest-visible
    /// `serial` (at most 20 bytes) and one queue. Takes no lock: that is
    /// [`VirtioBlock::open`]'s job.
    pub fn from_file(
        file: File,
        name: String,
        readonly: bool,
        serial: Option<&str>,
    ) -> Result<Self, BlockError> {
        let config = BlockConfig {
            path: PathBuf::from(&name),
            image_type: Some(ImageType::Raw),
            backing_files: false,
            num_queues: 1,
            queue_size: QUEUE_SIZE,
            readonly,
            id: None,
            serial: None,
        };
        Self::from_file_as(file, name, &config, serial)
    }

    fn from_file_as(
        mut file: File,
        name: String,
        config: &BlockConfig,
        serial: Option<&str>,
    ) -> Result<Self, BlockError> {
        let readonly = config.readonly;
        let (num_queues, queue_size) = (config.num_queues, config.queue_size);
        if !(1..=MAX_QUEUES).contains(&num_queues)
            || !queue_size.is_power_of_two()
            || queue_size > MAX_QUEUE_SIZE
        {
            return Err(BlockError::Queues {
                disk: name,
                num_queues,
                queue_size,
            });
        }
        let serial = serial.unwrap_or("");
        let mut serial_bytes = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        if serial.len() > serial_bytes.len() {
            return Err(BlockError::SerialTooLong {
                disk: name,
                serial: serial.to_string(),
                len: serial.len(),
            });
        }
        serial_bytes[..serial.len()].copy_from_slice(serial.as_bytes());
        // Seeking to the end also sizes block devices, whose metadata says 0.
        let file_bytes = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                disk: name.clone(),
                source,
            })?;
        let (backend, bytes, opened_as) = image::open(
            file,
            &config.path,
            file_bytes,
            config.image_type,
            readonly,
            config.backing_files,
        )
        .map_err(|source| BlockError::Image {
            disk: name.clone(),
            source,
        })?;
        if bytes < SECTOR_SIZE {
            return Err(BlockError::TooSmall { disk: name, bytes });
        }
        if !bytes.is_multiple_of(SECTOR_SIZE) {
            log::warn!(
                "disk {name}: the last {} bytes of the image are not a whole sector and are \
                 not visible to the guest",
                bytes % SECTOR_SIZE
            );
        }
        let capacity_sectors = bytes / SECTOR_SIZE;
        let mut features = features::VERSION_1
            | features::RING_INDIRECT_DESC
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE;
        if readonly {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        if num_queues > 1 {
            features |= 1 << VIRTIO_BLK_F_MQ;
        }
        let mut config = [0u8; config_offset::LEN];
        let mut put = |at: usize, bytes: &[u8]| config[at..at + bytes.len()].copy_from_slice(bytes);
        put(config_offset::CAPACITY, &capacity_sectors.to_le_bytes());
        put(config_offset::SEG_MAX, &SEG_MAX.to_le_bytes());
        put(config_offset::BLK_SIZE, &BLOCK_SIZE.to_le_bytes());
        put(config_offset::NUM_QUEUES, &num_queues.to_le_bytes());
        Ok(Self {
            disk: Arc::new(Disk {
                name,
                backend,
                readonly,
                capacity_sectors,
                serial: serial_bytes,
                #[cfg(test)]
                after_request: None,
            }),
            opened_as,
            features,
            queue_sizes: vec![queue_size; usize::from(num_queues)],
            config,
            workers: Vec::new(),
        })
    }

    /// Installs the after-request hook (before the device is activated).
    #[cfg(test)]
    fn set_after_request(&mut self, hook: Box<dyn Fn() + Send + Sync>) {
        if let Some(disk) = Arc::get_mut(&mut self.disk) {
            disk.after_request = Some(hook);
        }
    }

    /// The format served, and whether it was guessed from the file's magic.
    pub fn opened_as(&self) -> OpenedAs {
        self.opened_as
    }

    /// Size of the disk in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors
    }

    /// Whether the guest sees the disk read-only.
    pub fn readonly(&self) -> bool {
        self.disk.readonly
    }
}

impl VirtioDevice for VirtioBlock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn name(&self) -> &str {
        &self.disk.name
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at.and_then(|at| self.config.get(at)).copied().unwrap_or(0);
        }
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemory>,
        _acked_features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        self.reset();
        if !queues.iter().any(|q| q.index == 0) {
            return Err(ActivateError::MissingQueue {
                device: self.disk.name.clone(),
                queue: 0,
            });
        }
        // One worker per queue: the queues of a multi-queue disk are served in parallel.
        for queue in queues {
            let worker = Worker::spawn(self.disk.clone(), mem.clone(), queue, interrupt.clone())
                .map_err(|source| ActivateError::Worker {
                    device: self.disk.name.clone(),
                    source,
                });
            match worker {
                Ok(worker) => self.workers.push(worker),
                Err(e) => {
                    self.reset();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        for worker in self.workers.drain(..) {
            worker.stop();
        }
    }
}

#[cfg(test)]
mod tests;
