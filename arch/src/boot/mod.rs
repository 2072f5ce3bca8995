//! Loading a Linux kernel, its command line and initramfs into guest memory, and writing the boot
//! information (zero page or PVH start info) that the chosen boot protocol hands to it.

mod kernel;
mod pvh;
mod reset_vector;
mod zero_page;

pub use kernel::{
    load_initramfs, load_kernel, probe_kernel, InitramfsPlacement, KernelImage, LoadedKernel,
};

use std::path::PathBuf;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::layout;
use linux_loader::loader::Cmdline;

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 32-bit flat protected mode, paging off (the PVH boot protocol).
    Protected32,
    /// 64-bit long mode on an identity map (the Linux 64-bit boot protocol).
    Long64,
}

/// What the boot vCPU's registers must say at the first instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// First instruction executed.
    pub rip: GuestAddress,
    /// CPU mode at that instruction.
    pub mode: EntryMode,
    /// Value of RSI (zero page) for the Linux protocol, of RBX (start info) for PVH.
    pub boot_info: BootInfoRegister,
}

/// Which register carries the boot-information pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoRegister {
    /// RSI = address of `boot_params` (Linux 64-bit boot protocol).
    Rsi(GuestAddress),
    /// RBX = address of `hvm_start_info` (PVH).
    Rbx(GuestAddress),
}

/// Why a kernel could not be prepared for boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be read.
    #[error("cannot read kernel {path}: {source}")]
    KernelRead {
        /// The kernel path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The kernel file starts like neither a 64-bit ELF nor a bzImage.
    #[error(
        "{path} is not a bootable x86_64 kernel: it starts like neither a 64-bit ELF vmlinux nor \
         a bzImage (no 'HdrS' setup header at 0x202)"
    )]
    KernelUnrecognized {
        /// The kernel path.
        path: PathBuf,
    },
    /// The kernel is neither an ELF nor a bzImage that linux-loader accepts.
    #[error("{path} is not a bootable x86_64 kernel (tried ELF: {elf}; bzImage: {bzimage})")]
    KernelFormat {
        /// The kernel path.
        path: PathBuf,
        /// Why the ELF loader refused it.
        elf: linux_loader::loader::Error,
        /// Why the bzImage loader refused it.
        bzimage: linux_loader::loader::Error,
    },
    /// A bzImage without the 64-bit entry point.
    #[error(
        "{path} is a bzImage without a 64-bit entry point (XLF_KERNEL_64); use a 64-bit kernel"
    )]
    KernelNot64Bit {
        /// The kernel path.
        path: PathBuf,
    },
    /// The initramfs could not be read.
    #[error("cannot read initramfs {path}: {source}")]
    InitramfsRead {
        /// The initramfs path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The initramfs does not fit between the kernel and the highest address it may occupy.
    #[error("initramfs {path} ({size} bytes) does not fit in guest RAM between the kernel end {kernel_end:#x} and {limit:#x}; give the guest more memory")]
    InitramfsTooLarge {
        /// The initramfs path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// End of the loaded kernel.
        kernel_end: u64,
        /// Highest address (exclusive) the initramfs may reach.
        limit: u64,
    },
    /// The kernel command line is not acceptable.
    #[error("kernel command line rejected: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// Writing a boot structure into guest memory failed.
    #[error("cannot write the {what} into guest memory: {detail}")]
    GuestWrite {
        /// Which structure.
        what: &'static str,
        /// The underlying error, rendered.
        detail: String,
    },
}

/// Everything the boot protocols need to describe the guest to the kernel.
#[derive(Clone, Debug)]
pub struct BootConfig<'a> {
    /// The loaded kernel.
    pub kernel: &'a LoadedKernel,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The initramfs placement, if any.
    pub initramfs: Option<InitramfsPlacement>,
    /// Guest RAM size in bytes.
    pub memory_bytes: u64,
    /// Where the ACPI RSDP was written.
    pub rsdp: GuestAddress,
}

/// Writes the command line and the protocol's boot information, and returns how to enter the
/// kernel.
pub fn configure_boot<M: GuestMemoryBackend>(
    mem: &M,
    cfg: &BootConfig<'_>,
) -> Result<BootEntry, BootError> {
    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    if !cfg.cmdline.is_empty() {
        cmdline
            .insert_str(cfg.cmdline)
            .map_err(BootError::Cmdline)?;
    }
    linux_loader::loader::load_cmdline(mem, GuestAddress(layout::CMDLINE_START), &cmdline)
        .map_err(|e| BootError::GuestWrite {
            what: "kernel command line",
            detail: e.to_string(),
        })?;
    let cmdline_len = cfg.cmdline.len() as u32 + 1;
    reset_vector::write_reset_vector(mem)?;
    match cfg.kernel.image {
        KernelImage::Pvh { entry } => {
            pvh::write_start_info(mem, cfg)?;
            Ok(BootEntry {
                rip: entry,
                mode: EntryMode::Protected32,
                boot_info: BootInfoRegister::Rbx(GuestAddress(layout::PVH_INFO_START)),
            })
        }
        KernelImage::BzImage { header } => {
            zero_page::write_zero_page(mem, cfg, Some(header), cmdline_len)?;
            Ok(BootEntry {
                // The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
                rip: GuestAddress(cfg.kernel.load_addr.0 + 0x200),
                mode: EntryMode::Long64,
                boot_info: BootInfoRegister::Rsi(GuestAddress(layout::ZERO_PAGE_START)),
            })
        }
        KernelImage::Elf64 { entry } => {
            zero_page::write_zero_page(mem, cfg, None, cmdline_len)?;
            Ok(BootEntry {
                rip: entry,
                mode: EntryMode::Long64,
                boot_info: BootInfoRegister::Rsi(GuestAddress(layout::ZERO_PAGE_START)),
            })
        }
    }
}
