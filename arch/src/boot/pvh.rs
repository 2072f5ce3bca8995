//! The PVH boot protocol's `hvm_start_info`, its module list (the initramfs) and memory map.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::{BootConfig, BootError};
use crate::{layout, memory};

/// `hvm_start_info.magic` ("xEn3" with bit 7 of the first byte set).
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// The start info, module list and memory map for `cfg`.
pub fn build_start_info(
    cfg: &BootConfig<'_>,
) -> (
    hvm_start_info,
    Vec<hvm_modlist_entry>,
    Vec<hvm_memmap_table_entry>,
) {
    let memmap: Vec<hvm_memmap_table_entry> = memory::e820_map(cfg.memory_bytes)
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind.code(),
            reserved: 0,
        })
        .collect();
    let modules: Vec<hvm_modlist_entry> = cfg
        .initramfs
        .iter()
        .map(|i| hvm_modlist_entry {
            paddr: i.addr.0,
            size: i.size,
            ..Default::default()
        })
        .collect();
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: layout::CMDLINE_START,
        rsdp_paddr: cfg.rsdp.0,
        memmap_paddr: layout::PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            layout::PVH_MODLIST_START
        },
        ..Default::default()
    };
    (info, modules, memmap)
}

/// Writes the start info at `layout::PVH_INFO_START` with its memmap and module list.
pub fn write_start_info<M: GuestMemoryBackend>(
    mem: &M,
    cfg: &BootConfig<'_>,
) -> Result<(), BootError> {
    let (info, modules, memmap) = build_start_info(cfg);
    let mut boot = BootParams::new(&info, GuestAddress(layout::PVH_INFO_START));
    boot.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP_START));
    if !modules.is_empty() {
        boot.set_modules(&modules, GuestAddress(layout::PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&boot, mem).map_err(|e| BootError::GuestWrite {
        what: "PVH start info",
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{InitramfsPlacement, KernelImage, LoadedKernel};

    #[test]
    fn start_info_points_at_cmdline_memmap_modules_and_rsdp() {
        let kernel = LoadedKernel {
            image: KernelImage::Pvh {
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
                size: 0x4000,
            }),
            memory_bytes: 8 << 30,
            rsdp: GuestAddress(layout::RSDP_START),
        };
        let (info, modules, memmap) = build_start_info(&cfg);
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.cmdline_paddr, 0x20000);
        assert_eq!(info.rsdp_paddr, 0xA0000);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, layout::PVH_MODLIST_START);
        assert_eq!((modules[0].paddr, modules[0].size), (0x1F00_0000, 0x4000));
        assert_eq!(info.memmap_entries, 4);
        assert_eq!(
            (memmap[2].addr, memmap[2].size, memmap[2].type_),
            (4 << 30, 5 << 30, 1)
        );
    }

    #[test]
    fn write_start_info_lands_in_guest_memory() {
        use vm_memory::Bytes;
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let kernel = LoadedKernel {
            image: KernelImage::Pvh {
                entry: GuestAddress(0x100_0000),
            },
            load_addr: GuestAddress(0x100_0000),
            end: 0x200_0000,
        };
        let cfg = BootConfig {
            kernel: &kernel,
            cmdline: "",
            initramfs: None,
            memory_bytes: 16 << 20,
            rsdp: GuestAddress(layout::RSDP_START),
        };
        write_start_info(&mem, &cfg).unwrap();
        let magic: u32 = mem.read_obj(GuestAddress(layout::PVH_INFO_START)).unwrap();
        assert_eq!(magic, XEN_HVM_START_MAGIC_VALUE);
        let first_type: u32 = mem
            .read_obj(GuestAddress(layout::PVH_MEMMAP_START + 16))
            .unwrap();
        assert_eq!(first_type, 1);
    }
}
