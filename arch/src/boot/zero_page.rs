//! The Linux boot protocol's "zero page" (`boot_params`): setup header, command line, initramfs,
//! RSDP and the e820 map.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::{BootConfig, BootError};
use crate::{layout, memory};

/// "HdrS": the setup header magic.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// The boot-sector signature the kernel checks in `boot_flag`.
const BOOT_FLAG: u16 = 0xAA55;
/// `type_of_loader` for a boot loader without an assigned id.
const LOADER_UNDEFINED: u8 = 0xff;
/// Default kernel alignment for an ELF kernel that has no setup header of its own.
const ELF_KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// Builds the zero page; `header` is the bzImage's setup header, `None` for a bare ELF kernel.
pub fn build_zero_page(
    cfg: &BootConfig<'_>,
    header: Option<setup_header>,
    cmdline_len: u32,
) -> Result<boot_params, BootError> {
    let mut params = boot_params {
        hdr: header.unwrap_or_else(|| setup_header {
            boot_flag: BOOT_FLAG,
            header: HDRS_MAGIC,
            kernel_alignment: ELF_KERNEL_ALIGNMENT,
            ..Default::default()
        }),
        ..Default::default()
    };
    if params.hdr.type_of_loader == 0 {
        params.hdr.type_of_loader = LOADER_UNDEFINED;
    }
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len;
    if let Some(initramfs) = cfg.initramfs {
        params.hdr.ramdisk_image = initramfs.addr.0 as u32;
        params.hdr.ramdisk_size = initramfs.size as u32;
    }
    params.acpi_rsdp_addr = cfg.rsdp.0;
    let map = memory::e820_map(cfg.memory_bytes);
    if map.len() > params.e820_table.len() {
        return Err(BootError::GuestWrite {
            what: "e820 map",
            detail: format!("{} entries exceed the zero page's table", map.len()),
        });
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind.code(),
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes the zero page at `layout::ZERO_PAGE_START`.
pub fn write_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    cfg: &BootConfig<'_>,
    header: Option<setup_header>,
    cmdline_len: u32,
) -> Result<(), BootError> {
    let params = build_zero_page(cfg, header, cmdline_len)?;
    let boot = BootParams::new(&params, GuestAddress(layout::ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&boot, mem).map_err(|e| BootError::GuestWrite {
        what: "zero page",
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{InitramfsPlacement, KernelImage, LoadedKernel};

    #[test]
    fn zero_page_carries_cmdline_initramfs_rsdp_and_e820() {
        let kernel = LoadedKernel {
            image: KernelImage::Elf64 {
                entry: GuestAddress(0x100_0000),
            },
            load_addr: GuestAddress(0x100_0000),
            end: 0x200_0000,
        };
        let cfg = BootConfig {
            kernel: &kernel,
            cmdline: "console=ttyS0",
            initramfs: Some(InitramfsPlacement {
                addr: GuestAddress(0x1F00_0000),
                size: 0x1234,
            }),
            memory_bytes: 512 << 20,
            rsdp: GuestAddress(layout::RSDP_START),
        };
        let p = build_zero_page(&cfg, None, 14).unwrap();
        assert_eq!({ p.hdr.header }, HDRS_MAGIC);
        assert_eq!({ p.hdr.boot_flag }, BOOT_FLAG);
        assert_eq!({ p.hdr.type_of_loader }, LOADER_UNDEFINED);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.cmdline_size }, 14);
        assert_eq!({ p.hdr.ramdisk_image }, 0x1F00_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!({ p.acpi_rsdp_addr }, 0xA0000);
        assert_eq!(p.e820_entries, 3);
        let second = p.e820_table[1];
        assert_eq!(
            ({ second.addr }, { second.size }, { second.r#type }),
            (0x10_0000, (512 << 20) - 0x10_0000, 1)
        );
        let third = p.e820_table[2];
        assert_eq!(
            ({ third.addr }, { third.r#type }),
            (layout::PCI_MMCONFIG_START, 2)
        );
    }

    #[test]
    fn bzimage_header_is_kept() {
        let header = setup_header {
            header: HDRS_MAGIC,
            version: 0x20f,
            type_of_loader: 0x21,
            ..Default::default()
        };
        let kernel = LoadedKernel {
            image: KernelImage::BzImage { header },
            load_addr: GuestAddress(0x10_0000),
            end: 0x80_0000,
        };
        let cfg = BootConfig {
            kernel: &kernel,
            cmdline: "",
            initramfs: None,
            memory_bytes: 64 << 20,
            rsdp: GuestAddress(layout::RSDP_START),
        };
        let p = build_zero_page(&cfg, Some(header), 1).unwrap();
        assert_eq!({ p.hdr.version }, 0x20f);
        assert_eq!({ p.hdr.type_of_loader }, 0x21);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
    }
}
