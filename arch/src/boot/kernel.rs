//! Putting the kernel and initramfs images into guest memory (linux-loader does the parsing).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::{setup_header, XLF_KERNEL_64};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::BootError;
use crate::layout;
use crate::memory;

/// The kind of kernel that was loaded, which decides the boot protocol.
#[derive(Clone, Copy, Debug)]
pub enum KernelImage {
    /// An ELF vmlinux with a PVH note: entered in 32-bit mode with `hvm_start_info`.
    Pvh {
        /// The PVH entry point from the ELF note.
        entry: GuestAddress,
    },
    /// An ELF vmlinux without a PVH note: entered at its 64-bit entry with a zero page.
    Elf64 {
        /// The ELF entry point.
        entry: GuestAddress,
    },
    /// A bzImage: entered at its 64-bit entry with a zero page built from its setup header.
    BzImage {
        /// The setup header read from the image.
        header: setup_header,
    },
}

impl std::fmt::Display for KernelImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelImage::Pvh { entry } => write!(f, "ELF vmlinux, PVH entry {:#x}", entry.0),
            KernelImage::Elf64 { entry } => write!(f, "ELF vmlinux, 64-bit entry {:#x}", entry.0),
            KernelImage::BzImage { header } => {
                write!(f, "bzImage, boot protocol {:#x}", { header.version })
            }
        }
    }
}

/// A kernel in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// Which format, and so which protocol.
    pub image: KernelImage,
    /// Where the kernel was loaded.
    pub load_addr: GuestAddress,
    /// First address past the loaded kernel.
    pub end: u64,
}

/// Where an initramfs was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitramfsPlacement {
    /// Guest physical address of its first byte.
    pub addr: GuestAddress,
    /// Its size in bytes.
    pub size: u64,
}

/// ELF's magic, and the class byte of a 64-bit ELF.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELF_CLASS_64: u8 = 2;
/// Where a bzImage's setup header says "HdrS".
const BZIMAGE_MAGIC_AT: usize = 0x202;

/// Checks, from its first bytes only, that `path` looks like a kernel [`load_kernel`] can load
/// (a 64-bit ELF, or a bzImage's setup header), so a wrong `--kernel` stops the VMM before
/// anything else is set up; the load itself may still refuse it later, with the full reason.
pub fn probe_kernel(path: &Path) -> Result<(), BootError> {
    let read_err = |source| BootError::KernelRead {
        path: path.to_path_buf(),
        source,
    };
    let mut head = Vec::with_capacity(BZIMAGE_MAGIC_AT + 4);
    File::open(path)
        .map_err(read_err)?
        .take((BZIMAGE_MAGIC_AT + 4) as u64)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    let elf64 = head.starts_with(ELF_MAGIC) && head.get(4) == Some(&ELF_CLASS_64);
    let bzimage = head.get(BZIMAGE_MAGIC_AT..BZIMAGE_MAGIC_AT + 4) == Some(b"HdrS".as_slice());
    if elf64 || bzimage {
        Ok(())
    } else {
        Err(BootError::KernelUnrecognized {
            path: path.to_path_buf(),
        })
    }
}

/// Loads the kernel at `path`: tries ELF first (for the PVH note), then bzImage.
pub fn load_kernel<M: GuestMemoryBackend>(mem: &M, path: &Path) -> Result<LoadedKernel, BootError> {
    let read_err = |source| BootError::KernelRead {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let highmem = Some(GuestAddress(layout::HIGH_RAM_START));
    let elf = match Elf::load(mem, None, &mut file, highmem) {
        Ok(r) => {
            let image = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(entry) => KernelImage::Pvh { entry },
                _ => KernelImage::Elf64 {
                    entry: r.kernel_load,
                },
            };
            return Ok(LoadedKernel {
                image,
                load_addr: r.kernel_load,
                end: r.kernel_end,
            });
        }
        Err(e) => e,
    };
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    match BzImage::load(mem, None, &mut file, highmem) {
        Ok(r) => {
            let header = r.setup_header.unwrap_or_default();
            if header.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::KernelNot64Bit {
                    path: path.to_path_buf(),
                });
            }
            Ok(LoadedKernel {
                image: KernelImage::BzImage { header },
                load_addr: r.kernel_load,
                end: r.kernel_end,
            })
        }
        Err(bzimage) => Err(BootError::KernelFormat {
            path: path.to_path_buf(),
            elf,
            bzimage,
        }),
    }
}

/// The highest address (exclusive) the initramfs may end at: the top of low RAM, and for a
/// bzImage also its `initrd_addr_max`.
pub fn initramfs_limit(kernel: &LoadedKernel, memory_bytes: u64) -> u64 {
    let mut limit = memory::low_ram_end(memory_bytes);
    if let KernelImage::BzImage { header } = kernel.image {
        if header.initrd_addr_max != 0 {
            limit = limit.min(u64::from(header.initrd_addr_max) + 1);
        }
    }
    limit
}

/// Picks the page-aligned address just below `limit` for `size` bytes, above `kernel_end`.
pub fn place_initramfs(kernel_end: u64, size: u64, limit: u64) -> Option<u64> {
    let addr = limit.checked_sub(size)? & !0xfff;
    (addr >= kernel_end).then_some(addr)
}

/// Reads the initramfs at `path` to the top of low RAM.
pub fn load_initramfs<M: GuestMemoryBackend>(
    mem: &M,
    path: &Path,
    kernel: &LoadedKernel,
    memory_bytes: u64,
) -> Result<InitramfsPlacement, BootError> {
    let read_err = |source| BootError::InitramfsRead {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let limit = initramfs_limit(kernel, memory_bytes);
    let addr = place_initramfs(kernel.end, size, limit).ok_or(BootError::InitramfsTooLarge {
        path: path.to_path_buf(),
        size,
        kernel_end: kernel.end,
        limit,
    })?;
    let mut data = Vec::with_capacity(size as usize);
    file.read_to_end(&mut data).map_err(read_err)?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(|e| BootError::GuestWrite {
            what: "initramfs",
            detail: e.to_string(),
        })?;
    Ok(InitramfsPlacement {
        addr: GuestAddress(addr),
        size: data.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initramfs_goes_page_aligned_to_the_top() {
        assert_eq!(
            place_initramfs(0x200_0000, 0x1800, 0x2000_0000),
            Some(0x1FFF_E000)
        );
        assert_eq!(
            place_initramfs(0x200_0000, 0x1000, 0x2000_0000),
            Some(0x1FFF_F000)
        );
    }

    #[test]
    fn initramfs_that_would_overlap_the_kernel_is_refused() {
        assert_eq!(place_initramfs(0x1000_0000, 0x1000_0001, 0x2000_0000), None);
        assert_eq!(place_initramfs(0, 0x3000_0000, 0x2000_0000), None);
    }

    #[test]
    fn bzimage_initrd_addr_max_caps_the_limit() {
        let header = setup_header {
            initrd_addr_max: 0x37FF_FFFF,
            ..Default::default()
        };
        let k = LoadedKernel {
            image: KernelImage::BzImage { header },
            load_addr: GuestAddress(0x10_0000),
            end: 0x200_0000,
        };
        assert_eq!(initramfs_limit(&k, 4 << 30), 0x3800_0000);
        assert_eq!(initramfs_limit(&k, 512 << 20), 512 << 20);
        let pvh = LoadedKernel {
            image: KernelImage::Pvh {
                entry: GuestAddress(0x100_0000),
            },
            ..k
        };
        assert_eq!(initramfs_limit(&pvh, 4 << 30), 0xC000_0000);
    }

    #[test]
    fn kernel_headers_pass_the_probe() {
        let dir = std::env::temp_dir().join(format!("viaduct-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k");
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.resize(64, 0);
        std::fs::write(&path, &elf).unwrap();
        assert!(probe_kernel(&path).is_ok());
        elf[4] = 1; // a 32-bit ELF
        std::fs::write(&path, &elf).unwrap();
        assert!(probe_kernel(&path).is_err());
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&path, &bz).unwrap();
        assert!(probe_kernel(&path).is_ok());
        std::fs::write(&path, b"HdrS").unwrap(); // too short to have a setup header
        assert!(probe_kernel(&path).is_err());
        let missing = dir.join("missing");
        assert!(matches!(
            probe_kernel(&missing),
            Err(BootError::KernelRead { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let dir = std::env::temp_dir().join(format!("viaduct-arch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("not-a-kernel");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = probe_kernel(&path).unwrap_err();
        assert!(matches!(err, BootError::KernelUnrecognized { .. }), "{err}");
        assert!(err.to_string().contains("not a bootable x86_64 kernel"));
        let err = load_kernel(&mem, &path).unwrap_err();
        assert!(matches!(err, BootError::KernelFormat { .. }), "{err}");
        assert!(err.to_string().contains("not a bootable x86_64 kernel"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
