//! The store behind a virtio-blk disk: a raw file (or block device) read and written with
//! `preadv`/`pwritev` straight into the guest's buffers, or a qcow2 image served by the `imago`
//! crate (with its backing chain when the user allows one).
//!
//! Which one is decided once, when the disk is opened ([`open`]): `image_type=` if given,
//! otherwise the file's magic ([`super::format`]). A format viaduct cannot serve is refused
//! then, never exposed as raw. A disk whose format was guessed as raw refuses guest writes that
//! would put a known image header at byte 0, so a guest cannot turn its disk into a qcow2 image
//! that names a host file as its backing file on the next start.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use imago::format::gate::ImplicitOpenGate;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, Storage, StorageOpenOptions};
use vm_memory::VolatileSlice;

use super::format::{self, qcow2_incompatible, Detected};

/// Longest backing chain followed (cloud-hypervisor's `MAX_NESTING_DEPTH`): a loop of backing
/// files ends here instead of exhausting the stack.
pub const MAX_BACKING_DEPTH: u32 = 10;

/// Most `iovec`s one `preadv`/`pwritev` takes (`IOV_MAX` on Linux).
const IOV_MAX: usize = 1024;

/// `image_type=`: the format the user says the file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageType {
    /// A raw image or block device: guest sector N is file bytes N×512….
    Raw,
    /// A qcow2 image (v2 or v3), served through imago.
    Qcow2,
}

impl ImageType {
    /// The `image_type=` spelling.
    pub fn name(self) -> &'static str {
        match self {
            ImageType::Raw => "raw",
            ImageType::Qcow2 => "qcow2",
        }
    }
}

/// Why an image cannot be served (the caller adds the disk's name).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A recognised format viaduct does not implement.
    #[error(
        "{path} is a {format} image, which viaduct cannot serve; convert it with `qemu-img \
         convert -O qcow2` (or -O raw)"
    )]
    Foreign {
        /// The image.
        path: PathBuf,
        /// The format's name.
        format: &'static str,
    },
    /// `image_type=qcow2` on a file that is not qcow2.
    #[error("{path} is not a qcow2 image ({found}); check path= or give image_type=raw")]
    NotQcow2 {
        /// The image.
        path: PathBuf,
        /// What it is instead.
        found: String,
    },
    /// A qcow2 feature viaduct cannot serve.
    #[error("{path} {why}")]
    Qcow2Unsupported {
        /// The image.
        path: PathBuf,
        /// Which feature, and the remedy.
        why: &'static str,
    },
    /// A backing file, and `backing_files=on` not given.
    #[error(
        "{path} has the backing file {backing:?}; give backing_files=on (with image_type=qcow2) \
         to let viaduct open it read-only"
    )]
    BackingFilesOff {
        /// The image.
        path: PathBuf,
        /// The name in its header.
        backing: String,
    },
    /// imago could not open the image (or its backing chain).
    #[error("cannot open the qcow2 image {path}")]
    Qcow2Open {
        /// The image.
        path: PathBuf,
        /// What imago said.
        #[source]
        source: io::Error,
    },
    /// Reading the header failed.
    #[error("cannot read the header of {path}")]
    Header {
        /// The image.
        path: PathBuf,
        /// What `pread` said.
        #[source]
        source: io::Error,
    },
}

/// How a disk's image was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenedAs {
    /// The format served.
    pub image_type: ImageType,
    /// Whether the format came from the magic rather than `image_type=`.
    pub guessed: bool,
}

/// The open image, shared by the device's workers.
pub(crate) enum Backend {
    /// Raw: I/O with `preadv`/`pwritev` on this file.
    Raw {
        /// The image or block device.
        file: File,
        /// Refuse writes that plant an image header at byte 0 (format guessed as raw).
        guard_header: bool,
    },
    /// qcow2, through imago.
    Qcow2(Box<FormatAccess<imago::file::File>>),
}

/// Follows a qcow2 backing chain up to [`MAX_BACKING_DEPTH`] images, each opened read-only.
struct ChainGate {
    depth: u32,
}

impl ImplicitOpenGate<imago::file::File> for ChainGate {
    fn open_format<F: FormatDriverBuilder<imago::file::File>>(
        &mut self,
        builder: F,
    ) -> io::Result<FormatAccess<imago::file::File>> {
        if self.depth >= MAX_BACKING_DEPTH {
            return Err(io::Error::other(format!(
                "the backing chain is longer than {MAX_BACKING_DEPTH} images (a loop?)"
            )));
        }
        let inner = builder.write(false).open(ChainGate {
            depth: self.depth + 1,
        })?;
        Ok(FormatAccess::new(inner))
    }

    fn open_storage(&mut self, options: StorageOpenOptions) -> io::Result<imago::file::File> {
        // A backing file gets the header checks imago lacks, as the top image does.
        if let Some(path) = options.get_filename() {
            let file = File::open(path)?;
            let size = file.metadata()?.len();
            if let Detected::Qcow2(header) = format::detect_file(&file, size)? {
                if header.damaged_extension {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "backing file {}: {}",
                            path.display(),
                            format::DAMAGED_EXTENSION
                        ),
                    ));
                }
            }
        }
        imago::file::File::open(options.write(false))
    }
}

/// Decides the format of `file` (`size` bytes, at `path`) and opens it: `image_type` as given
/// (None: from the magic), writable unless `readonly`, following backing files only if
/// `backing_files`.
pub(crate) fn open(
    file: File,
    path: &Path,
    size: u64,
    image_type: Option<ImageType>,
    readonly: bool,
    backing_files: bool,
) -> Result<(Backend, u64, OpenedAs), ImageError> {
    let detected = format::detect_file(&file, size).map_err(|source| ImageError::Header {
        path: path.to_path_buf(),
        source,
    })?;
    let header = match (image_type, detected) {
        (Some(ImageType::Raw), _) | (None, Detected::Raw) => {
            let guessed = image_type.is_none();
            let opened = OpenedAs {
                image_type: ImageType::Raw,
                guessed,
            };
            let backend = Backend::Raw {
                file,
                guard_header: guessed && !readonly,
            };
            return Ok((backend, size, opened));
        }
        (_, Detected::Foreign(format)) => {
            return Err(match image_type {
                Some(_) => ImageError::NotQcow2 {
                    path: path.to_path_buf(),
                    found: format!("it is a {format} image"),
                },
                None => ImageError::Foreign {
                    path: path.to_path_buf(),
                    format,
                },
            })
        }
        (Some(ImageType::Qcow2), Detected::Raw) => {
            return Err(ImageError::NotQcow2 {
                path: path.to_path_buf(),
                found: "no qcow2 magic at its start".into(),
            })
        }
        (_, Detected::Qcow2(header)) => header,
    };
    let unsupported = |why| ImageError::Qcow2Unsupported {
        path: path.to_path_buf(),
        why,
    };
    if let Some(why) = header.unsupported() {
        return Err(unsupported(why));
    }
    if header.incompatible & qcow2_incompatible::EXTERNAL_DATA_FILE != 0 {
        return Err(unsupported(
            "keeps its data in an external data file, which viaduct does not open; convert it \
             with `qemu-img convert -O qcow2`",
        ));
    }
    // A guessed format never follows a backing file: the header may have been written by a
    // guest (cloud-hypervisor's rule too).
    let follow = backing_files && image_type.is_some();
    if header.has_backing_file() && !follow {
        let backing = format::backing_name(&file, &header)
            .map_err(|source| ImageError::Header {
                path: path.to_path_buf(),
                source,
            })?
            .unwrap_or_default();
        return Err(ImageError::BackingFilesOff {
            path: path.to_path_buf(),
            backing,
        });
    }
    let qcow2_open = |source| ImageError::Qcow2Open {
        path: path.to_path_buf(),
        source,
    };
    let options = StorageOpenOptions::new().filename(path).write(!readonly);
    let storage = imago::file::File::from_open_file(file, options).map_err(qcow2_open)?;
    let builder = Qcow2::<imago::file::File>::builder(storage).write(!readonly);
    let qcow2 = if follow {
        builder.open(ChainGate { depth: 1 })
    } else {
        builder.open(DenyImplicitOpenGate::default())
    }
    .map_err(qcow2_open)?;
    let access = FormatAccess::new(qcow2);
    let size = access.size();
    let opened = OpenedAs {
        image_type: ImageType::Qcow2,
        guessed: image_type.is_none(),
    };
    Ok((Backend::Qcow2(Box::new(access)), size, opened))
}

/// `preadv`/`pwritev` on `fd` at `offset` until every byte of `iovs` is moved.
fn transfer_all(fd: i32, iovs: &mut [libc::iovec], mut offset: u64, write: bool) -> io::Result<()> {
    let mut first = 0;
    while first < iovs.len() {
        if iovs[first].iov_len == 0 {
            first += 1;
            continue;
        }
        let batch = &iovs[first..iovs.len().min(first + IOV_MAX)];
        let at = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))?;
        // SAFETY: every iovec points into guest memory kept mapped by the caller's slice guards,
        // each `iov_len` bytes long; the kernel only reads (pwritev) or writes (preadv) them.
        let n = unsafe {
            if write {
                libc::pwritev(fd, batch.as_ptr(), batch.len() as libc::c_int, at)
            } else {
                libc::preadv(fd, batch.as_ptr(), batch.len() as libc::c_int, at)
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the image ends at byte {offset}"),
            ));
        }
        let mut moved = n as usize;
        offset += moved as u64;
        while moved > 0 {
            let iov = &mut iovs[first];
            if iov.iov_len <= moved {
                moved -= iov.iov_len;
                iov.iov_len = 0;
                first += 1;
            } else {
                // SAFETY: advancing within the same buffer, `moved` < its length.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(moved) }.cast();
                iov.iov_len -= moved;
                moved = 0;
            }
        }
    }
    Ok(())
}

impl Backend {
    /// Fills `bufs` (guest memory) from the image at byte `offset`.
    pub(crate) fn read(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        match self {
            Backend::Raw { file, .. } => {
                let guards: Vec<_> = bufs.iter().map(|s| s.ptr_guard_mut()).collect();
                let mut iovs: Vec<libc::iovec> = guards
                    .iter()
                    .map(|g| libc::iovec {
                        iov_base: g.as_ptr().cast(),
                        iov_len: g.len(),
                    })
                    .collect();
                transfer_all(file.as_raw_fd(), &mut iovs, offset, false)
            }
            Backend::Qcow2(access) => {
                let (vector, _guard) = IoVectorMut::from_volatile_slice(bufs);
                access.readv(vector, offset)
            }
        }
    }

    /// Writes `bufs` (guest memory) to the image at byte `offset`.
    pub(crate) fn write(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        match self {
            Backend::Raw { file, guard_header } => {
                if *guard_header && offset == 0 {
                    // The first sector goes through a copy, checked, so the guest cannot change
                    // it between the check and the write.
                    let Some((first, rest)) = bufs.split_first() else {
                        return Ok(());
                    };
                    let mut head = vec![0u8; first.len().min(format::HEAD_BYTES)];
                    first.copy_to(&mut head);
                    if format::plants_a_header(&head) {
                        return Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            "refused: the write would put an image format header at byte 0 of \
                             a disk whose format was guessed as raw (give image_type=raw to \
                             allow it)",
                        ));
                    }
                    std::os::unix::fs::FileExt::write_all_at(file, &head, 0)?;
                    let tail = first
                        .subslice(head.len(), first.len() - head.len())
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    let rest = std::iter::once(&tail).chain(rest);
                    return write_raw(file, rest, head.len() as u64);
                }
                write_raw(file, bufs.iter(), offset)
            }
            Backend::Qcow2(access) => {
                let (vector, _guard) = IoVector::from_volatile_slice(bufs);
                access.writev(vector, offset)
            }
        }
    }

    /// Makes completed writes durable (`VIRTIO_BLK_T_FLUSH`).
    pub(crate) fn flush(&self) -> io::Result<()> {
        match self {
            Backend::Raw { file, .. } => file.sync_data(),
            Backend::Qcow2(access) => {
                access.flush()?;
                access.sync()
            }
        }
    }
}

fn write_raw<'a, 'b: 'a>(
    file: &File,
    bufs: impl Iterator<Item = &'a VolatileSlice<'b>>,
    offset: u64,
) -> io::Result<()> {
    let guards: Vec<_> = bufs.map(|s| s.ptr_guard()).collect();
    let mut iovs: Vec<libc::iovec> = guards
        .iter()
        .map(|g| libc::iovec {
            iov_base: g.as_ptr().cast_mut().cast(),
            iov_len: g.len(),
        })
        .collect();
    transfer_all(file.as_raw_fd(), &mut iovs, offset, true)
}
