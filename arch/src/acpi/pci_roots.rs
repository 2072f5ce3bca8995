//! DSDT objects that make each PCI segment a PCI root the guest enumerates: a PNP0A08 host
//! bridge per segment (`\_SB_.PCxx` with `_SEG`, `_UID`, `_BBN` and a `_CRS` giving its bus
//! range, I/O window and 32-/64-bit MMIO windows), and a PNP0C02 motherboard device reserving
//! the ECAM windows, as Linux expects for MMCONFIG. The ECAM windows are deliberately not in the
//! host bridges' `_CRS`: Linux would take them for bus windows and could place BARs there.
//!
//! With hotplug on ([`AcpiConfig::hotplug`]) each host bridge also holds the slot objects and
//! methods of ACPI PCI hotplug (`super::hotplug::slots_aml`); without it, the host bridges are
//! exactly what they were before hotplug existed.

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, Memory32Fixed, Name, Package, Path,
    ResourceTemplate, IO,
};
use acpi_tables::Aml;

use super::{AcpiConfig, EcamWindow};

/// One PCI root (segment) as the guest's firmware tables describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciRootDescription {
    /// PCI segment group number (`_SEG`, `_UID`, MCFG segment).
    pub segment: u16,
    /// Base of the segment's ECAM window (bus 0).
    pub ecam_base: u64,
    /// Size of the ECAM window: 1 MiB per decoded bus.
    pub ecam_size: u32,
    /// 32-bit MMIO window `[start, end]` (inclusive).
    pub mmio32: (u32, u32),
    /// 64-bit MMIO window `[start, end]` (inclusive), if the segment has one.
    pub mmio64: Option<(u64, u64)>,
    /// I/O port window `[start, end]` (inclusive) for I/O BARs, if any.
    pub io: Option<(u16, u16)>,
    /// Whether this root also answers the legacy 0xCF8/0xCFC config ports (segment 0).
    pub legacy_config_ports: bool,
}

/// Legacy PCI configuration ports, decoded by segment 0's host bridge.
const PCI_CONFIG_PORT: u16 = 0xcf8;
const PCI_CONFIG_PORT_LEN: u8 = 8;

/// `\_SB_.PCxx`, xx the segment number in hex (enough for the 256 segments ECAM allows).
pub fn root_path(segment: u16) -> String {
    format!("\\_SB_.PC{:02X}", segment & 0xff)
}

/// Slots on a root bus and INTx pins per device.
const SLOTS: u8 = 32;
const PINS: u8 = 4;

/// `_PRT`: for every slot and INTx pin, the IOAPIC GSI it raises (`layout::pci_intx_gsi`).
fn prt_entries() -> Vec<(u32, u8, u32)> {
    (0..SLOTS)
        .flat_map(|slot| {
            (0..PINS).map(move |pin| {
                let address = (u32::from(slot) << 16) | 0xffff;
                (address, pin, crate::layout::pci_intx_gsi(slot, pin))
            })
        })
        .collect()
}

/// Serialises the host bridge device for `root`; with `hotplug`, its slot devices
/// `S001`…`S031` and the `DVNT`/`PCNT` methods too.
pub fn pci_root_aml(root: &PciRootDescription, hotplug: bool, sink: &mut Vec<u8>) {
    let bus = AddressSpace::<u16>::new_bus_number(0, ((root.ecam_size >> 20).max(1) - 1) as u16);
    let cfg_ports = IO::new(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, PCI_CONFIG_PORT_LEN);
    let io = root
        .io
        .map(|(lo, hi)| AddressSpace::<u16>::new_io(lo, hi, None));
    let mmio32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        root.mmio32.0,
        root.mmio32.1,
        None,
    );
    let mmio64 = root.mmio64.map(|(lo, hi)| {
        AddressSpace::<u64>::new_memory(AddressSpaceCacheable::NotCacheable, true, lo, hi, None)
    });
    let mut resources: Vec<&dyn Aml> = vec![&bus];
    if root.legacy_config_ports {
        resources.push(&cfg_ports);
    }
    if let Some(io) = &io {
        resources.push(io);
    }
    resources.push(&mmio32);
    if let Some(m) = &mmio64 {
        resources.push(m);
    }
    let crs = ResourceTemplate::new(resources);

    let hid = EISAName::new("PNP0A08");
    let cid = EISAName::new("PNP0A03");
    let adr = 0u8;
    let seg = root.segment;
    let bbn = 0u8;
    let cca = 1u8; // DMA is cache coherent
    let zero = 0u8;
    let prt_data = prt_entries();
    let prt_rows: Vec<Package> = prt_data
        .iter()
        .map(|(address, pin, gsi)| Package::new(vec![address, pin, &zero, gsi]))
        .collect();
    let prt = Package::new(prt_rows.iter().map(|p| p as &dyn Aml).collect());
    let hid = Name::new(Path::new("_HID"), &hid);
    let cid = Name::new(Path::new("_CID"), &cid);
    let adr = Name::new(Path::new("_ADR"), &adr);
    let seg_name = Name::new(Path::new("_SEG"), &seg);
    let uid = Name::new(Path::new("_UID"), &seg);
    let bbn = Name::new(Path::new("_BBN"), &bbn);
    let cca = Name::new(Path::new("_CCA"), &cca);
    let crs = Name::new(Path::new("_CRS"), &crs);
    let prt = Name::new(Path::new("_PRT"), &prt);
    let mut children: Vec<&dyn Aml> =
        vec![&hid, &cid, &adr, &seg_name, &uid, &bbn, &cca, &crs, &prt];
    let slots = hotplug.then(|| RawAml(super::hotplug::slots_aml(root.segment)));
    if let Some(slots) = &slots {
        children.push(slots);
    }
    Device::new(Path::new(&root_path(root.segment)), children).to_aml_bytes(sink);
}

/// AML already serialised, emitted as is (a list of objects inside a device).
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// Serialises `\_SB_.MBRD` (PNP0C02) reserving every ECAM window, so the OS trusts MCFG.
pub fn ecam_reservation_aml(roots: &[PciRootDescription], sink: &mut Vec<u8>) {
    let windows: Vec<Memory32Fixed> = roots
        .iter()
        .map(|r| Memory32Fixed::new(false, r.ecam_base as u32, r.ecam_size))
        .collect();
    let resources: Vec<&dyn Aml> = windows.iter().map(|w| w as &dyn Aml).collect();
    let crs = ResourceTemplate::new(resources);
    let hid = EISAName::new("PNP0C02");
    let uid = 0u8;
    Device::new(
        Path::new("\\_SB_.MBRD"),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &uid),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )
    .to_aml_bytes(sink);
}

/// Serialises every root of `roots` and the ECAM reservation (nothing for no roots).
pub(super) fn pci_roots_aml(roots: &[PciRootDescription], hotplug: bool, sink: &mut Vec<u8>) {
    if roots.is_empty() {
        return;
    }
    for root in roots {
        pci_root_aml(root, hotplug, sink);
    }
    ecam_reservation_aml(roots, sink);
}

impl AcpiConfig {
    /// Describes `roots` in the DSDT (host bridges + ECAM reservation) and the MCFG. The AML is
    /// built with the tables, so [`AcpiConfig::hotplug`] may be set before or after this.
    pub fn add_pci_roots(&mut self, roots: &[PciRootDescription]) {
        for root in roots {
            self.pci_roots.push(*root);
            self.ecam_windows.push(EcamWindow {
                base: root.ecam_base,
                segment: root.segment,
                start_bus: 0,
                end_bus: ((root.ecam_size >> 20).max(1) - 1) as u8,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(segment: u16) -> PciRootDescription {
        PciRootDescription {
            segment,
            ecam_base: 0xE800_0000 + (u64::from(segment) << 20),
            ecam_size: 1 << 20,
            mmio32: (0xC000_0000, 0xDAAA_9FFF),
            mmio64: Some((0x1_0000_0000, 0x3F_FFFF_FFFF)),
            io: Some((0x1000, 0xFFFF)),
            legacy_config_ports: segment == 0,
        }
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn root_paths_are_four_character_names() {
        assert_eq!(root_path(0), "\\_SB_.PC00");
        assert_eq!(root_path(0x5f), "\\_SB_.PC5F");
    }

    #[test]
    fn host_bridge_carries_segment_and_windows() {
        let mut aml = Vec::new();
        pci_root_aml(&root(5), false, &mut aml);
        assert!(find(&aml, b"PC05").is_some());
        // _SEG and _UID are the segment number (a ByteConst 5: 0x0A 0x05).
        let seg = find(&aml, b"_SEG").unwrap();
        assert_eq!(&aml[seg + 4..seg + 6], &[0x0A, 0x05]);
        let uid = find(&aml, b"_UID").unwrap();
        assert_eq!(&aml[uid + 4..uid + 6], &[0x0A, 0x05]);
        // The 32-bit window: DWord memory descriptor (0x87) with min/max in place.
        let dword = find(&aml, &[0x87, 0x17, 0x00, 0x00]).unwrap();
        let min = u32::from_le_bytes(aml[dword + 10..dword + 14].try_into().unwrap());
        let max = u32::from_le_bytes(aml[dword + 14..dword + 18].try_into().unwrap());
        assert_eq!((min, max), (0xC000_0000, 0xDAAA_9FFF));
        // The 64-bit window: QWord memory descriptor (0x8A).
        let qword = find(&aml, &[0x8A, 0x2B, 0x00, 0x00]).unwrap();
        let max64 = u64::from_le_bytes(aml[qword + 22..qword + 30].try_into().unwrap());
        assert_eq!(max64, 0x3F_FFFF_FFFF);
        // Only segment 0 claims the 0xCF8 ports (IO descriptor 0x47, min 0x0CF8).
        assert!(find(&aml, &[0x47, 0x01, 0xF8, 0x0C]).is_none());
        let mut aml0 = Vec::new();
        pci_root_aml(&root(0), false, &mut aml0);
        assert!(find(&aml0, &[0x47, 0x01, 0xF8, 0x0C]).is_some());
    }

    #[test]
    fn prt_routes_every_slot_and_pin_to_pins_16_to_23() {
        let prt = prt_entries();
        assert_eq!(prt.len(), 128);
        assert_eq!(prt[0], (0x0000_ffff, 0, 16));
        assert_eq!(prt[3 * 4 + 1], (0x0003_ffff, 1, 20));
        assert!(prt.iter().all(|&(_, _, gsi)| (16..24).contains(&gsi)));
        let mut aml = Vec::new();
        pci_root_aml(&root(0), false, &mut aml);
        assert!(find(&aml, b"_PRT").is_some());
    }

    #[test]
    fn ecam_is_reserved_but_not_a_bridge_window() {
        // Memory32Fixed descriptor (0x86, length 9) at the ECAM base.
        let ecam_desc = [0x86, 0x09, 0x00, 0x00, 0x00, 0x00, 0x10, 0xE8];
        let mut bridge = Vec::new();
        pci_root_aml(&root(1), false, &mut bridge);
        assert!(find(&bridge, &ecam_desc[..2]).is_none());
        let mut mbrd = Vec::new();
        ecam_reservation_aml(&[root(1)], &mut mbrd);
        assert!(find(&mbrd, &ecam_desc).is_some());
    }

    #[test]
    fn adding_roots_fills_mcfg_and_reserves_ecam() {
        let mut cfg = AcpiConfig::new(1);
        cfg.add_pci_roots(&[root(0), root(1), root(2)]);
        assert_eq!(cfg.ecam_windows.len(), 3);
        assert_eq!(cfg.ecam_windows[2].base, 0xE820_0000);
        assert_eq!(
            (cfg.ecam_windows[2].start_bus, cfg.ecam_windows[2].end_bus),
            (0, 0)
        );
        assert_eq!(cfg.pci_roots.len(), 3);
        assert!(cfg.extra_dsdt_aml.is_empty(), "roots are not extra AML");
        let dsdt = crate::acpi::dsdt::create_dsdt(&cfg);
        assert!(find(&dsdt, b"MBRD").is_some());
        assert!(find(&dsdt, b"PC02").is_some());
    }

    #[test]
    fn ninety_six_roots_still_fit_below_1mib() {
        use vm_memory::{GuestAddress, GuestMemoryMmap};
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let mut cfg = AcpiConfig::new(254);
        let roots: Vec<PciRootDescription> = (0..96).map(root).collect();
        cfg.add_pci_roots(&roots);
        let rsdp = crate::acpi::create_acpi_tables(&mem, &cfg).unwrap();
        assert_eq!(rsdp, GuestAddress(crate::layout::RSDP_START));
    }
}
