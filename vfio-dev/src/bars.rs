//! Discovering a host device's BARs: the standard size probe through the VFIO config region
//! (write all-ones, read back, restore), cross-checked against the VFIO region sizes.
//!
//! vfio-pci virtualizes the BAR registers, so the probe never disturbs the host's decoding; the
//! result is a [`BarSpec`] per implemented BAR (and the ROM) for the VMM's allocator, plus the
//! VFIO region behind it.

use pci::bar::{BarIndex, BarKind, BarSpec, NUM_BARS};

use crate::access::{region, RegionInfo, VfioDeviceAccess};

/// Memory BAR bit 3: prefetchable.
const PREFETCHABLE: u32 = 1 << 3;
/// Memory BAR bits 2:1 = 10: 64-bit.
const MEM64: u32 = 0b10 << 1;
/// BAR bit 0: I/O space.
const IO: u32 = 1;
/// Address bits of the ROM BAR (bit 0 is the enable, bits 10:1 reserved).
const ROM_ADDRESS_MASK: u32 = 0xffff_f800;

/// One implemented BAR of the host device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostBar {
    /// What the guest sees and the allocator places.
    pub spec: BarSpec,
    /// The VFIO region behind it (`region::BAR0 + n`, or `region::ROM`).
    pub region: RegionInfo,
}

impl HostBar {
    /// The VFIO region index of this BAR.
    pub fn region_index(&self) -> u32 {
        region_index(self.spec.index)
    }
}

/// The VFIO region index of BAR `index` (the ROM is region 6, like its `BarIndex` number).
pub fn region_index(index: BarIndex) -> u32 {
    region::BAR0 + u32::from(index.get())
}

/// Probes BARs 0..=5 and the ROM of `access`. BARs that probe as size 0, or that have no VFIO
/// region to access them through, are absent. Errors are sentences for `DeviceError::Bar`.
pub fn discover(name: &str, access: &dyn VfioDeviceAccess) -> Result<Vec<HostBar>, String> {
    let mut bars = Vec::new();
    let mut n = 0;
    while n < NUM_BARS {
        let index = BarIndex::new(n as u8).expect("0..=5 is a BAR");
        let offset = index.config_offset() as u64;
        let (flags, lower) = probe(access, offset, u32::MAX);
        let (kind, size) = if flags & IO != 0 {
            (BarKind::Io, lowest_bit(u64::from(lower & !0b11)))
        } else if flags & 0b110 == MEM64 {
            if n + 1 == NUM_BARS {
                return Err(format!("{index} claims to be 64-bit but is the last BAR"));
            }
            let (_, upper) = probe(access, offset + 4, u32::MAX);
            n += 1;
            let mask = (u64::from(upper) << 32) | u64::from(lower & !0xf);
            (BarKind::Mem64, lowest_bit(mask))
        } else {
            (BarKind::Mem32, lowest_bit(u64::from(lower & !0xf)))
        };
        n += 1;
        if size == 0 {
            continue;
        }
        let Some(region) = checked_region(name, access, index, size) else {
            continue;
        };
        let mut spec = BarSpec::new(index, size, kind);
        if kind != BarKind::Io && flags & PREFETCHABLE != 0 {
            spec = spec.prefetchable();
        }
        bars.push(HostBar { spec, region });
    }
    let rom_offset = BarIndex::ROM.config_offset() as u64;
    let (_, rom) = probe(access, rom_offset, ROM_ADDRESS_MASK);
    let rom_size = lowest_bit(u64::from(rom & ROM_ADDRESS_MASK));
    if rom_size != 0 {
        if let Some(region) = checked_region(name, access, BarIndex::ROM, rom_size) {
            bars.push(HostBar {
                spec: BarSpec::rom(rom_size),
                region,
            });
        }
    }
    Ok(bars)
}

/// Writes `probe` to the config dword at `offset`, returns (original, read-back) and restores
/// the original.
fn probe(access: &dyn VfioDeviceAccess, offset: u64, probe: u32) -> (u32, u32) {
    let original = read_u32(access, offset);
    access.region_write(region::CONFIG, offset, &probe.to_le_bytes());
    let sized = read_u32(access, offset);
    access.region_write(region::CONFIG, offset, &original.to_le_bytes());
    (original, sized)
}

/// The VFIO region of a BAR that probed as `size` bytes, if it can be used. A region smaller
/// than the probe cannot back the BAR (absent, with a warning); a larger one is used, since the
/// guest only reaches `size` bytes of it.
fn checked_region(
    name: &str,
    access: &dyn VfioDeviceAccess,
    index: BarIndex,
    size: u64,
) -> Option<RegionInfo> {
    match access.region_info(region_index(index)) {
        Some(r) if r.size >= size => {
            if r.size > size {
                log::warn!(
                    "{name}: {index} probes as {size:#x} bytes but its VFIO region has {:#x}; \
                     using the probed size",
                    r.size
                );
            }
            Some(r)
        }
        other => {
            log::warn!(
                "{name}: {index} probes as {size:#x} bytes but VFIO offers {:#x}; \
                 the BAR is left out",
                other.map_or(0, |r| r.size)
            );
            None
        }
    }
}

/// Reads the config dword at `offset` from the device.
pub fn read_u32(access: &dyn VfioDeviceAccess, offset: u64) -> u32 {
    let mut b = [0; 4];
    access.region_read(region::CONFIG, offset, &mut b);
    u32::from_le_bytes(b)
}

/// The lowest set bit of the writable address bits: the size of a naturally aligned BAR (this
/// also works for I/O BARs whose upper 16 bits read back as zero).
fn lowest_bit(mask: u64) -> u64 {
    mask & mask.wrapping_neg()
}
