//! Tests of the ACPI tables, read back from guest memory the way a guest would find them.

mod aml_reader;

use acpi_tables::aml::{Device, EISAName, Name, Path};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use self::aml_reader::{eisa_id, resources, Obj, Resource};
use super::hotplug::{GED_PCI_DEVICES_CHANGED, GED_POWER_BUTTON};
use super::*;

const MEM_SIZE: usize = 2 << 20;
/// MADT flags bit 0.
const MADT_PCAT_COMPAT_FLAG: u32 = 1;

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn build(cfg: &AcpiConfig) -> (GuestMemoryMmap, GuestAddress) {
    let mem = guest_memory();
    let rsdp = create_acpi_tables(&mem, cfg).unwrap();
    (mem, rsdp)
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |acc, x| acc.wrapping_add(*x))
}

/// A table read back from guest memory.
struct Table {
    addr: u64,
    bytes: Vec<u8>,
}

impl Table {
    fn read(mem: &GuestMemoryMmap, addr: u64) -> Table {
        let len = u32_at(&read(mem, addr, 8), 4) as usize;
        assert!(len >= 36, "table at {addr:#x} shorter than its header");
        Table {
            addr,
            bytes: read(mem, addr, len),
        }
    }

    fn signature(&self) -> &[u8] {
        &self.bytes[0..4]
    }

    fn end(&self) -> u64 {
        self.addr + self.bytes.len() as u64
    }
}

/// Walks RSDP -> XSDT -> entries, and FADT -> DSDT; returns the RSDP bytes and every table.
fn walk(mem: &GuestMemoryMmap, rsdp_addr: GuestAddress) -> (Vec<u8>, Vec<Table>) {
    let rsdp = read(mem, rsdp_addr.0, 36);
    let xsdt = Table::read(mem, u64_at(&rsdp, 24));
    let mut tables = Vec::new();
    for i in 0..(xsdt.bytes.len() - 36) / 8 {
        let t = Table::read(mem, u64_at(&xsdt.bytes, 36 + 8 * i));
        if t.signature() == b"FACP" {
            tables.push(Table::read(mem, u64_at(&t.bytes, 140)));
        }
        tables.push(t);
    }
    tables.push(xsdt);
    (rsdp, tables)
}

fn find<'a>(tables: &'a [Table], sig: &[u8; 4]) -> &'a Table {
    let mut it = tables.iter().filter(|t| t.signature() == sig);
    let t = it.next().unwrap_or_else(|| panic!("no {sig:?} table"));
    assert!(it.next().is_none(), "two {sig:?} tables");
    t
}

fn dsdt_namespace(cfg: &AcpiConfig) -> aml_reader::Namespace {
    let (mem, rsdp) = build(cfg);
    let (_, tables) = walk(&mem, rsdp);
    aml_reader::decode(&find(&tables, b"DSDT").bytes[36..]).unwrap()
}

#[test]
fn rsdp() {
    let (mem, rsdp_addr) = build(&AcpiConfig::new(1));
    assert_eq!(rsdp_addr, GuestAddress(layout::RSDP_START));
    assert_eq!(rsdp_addr.0 % 16, 0);
    let rsdp = read(&mem, rsdp_addr.0, 36);
    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(&rsdp[9..15], &OEM_ID);
    assert_eq!(rsdp[15], 2, "revision");
    assert_eq!(u32_at(&rsdp, 16), 0, "no RSDT");
    assert_eq!(u32_at(&rsdp, 20), 36, "length");
    assert_eq!(sum(&rsdp[0..20]), 0, "ACPI 1.0 checksum");
    assert_eq!(sum(&rsdp), 0, "extended checksum");
    let xsdt = Table::read(&mem, u64_at(&rsdp, 24));
    assert_eq!(xsdt.signature(), b"XSDT");
}

#[test]
fn every_checksum_is_zero() {
    let mut cfg = AcpiConfig::new(4);
    cfg.ecam_windows.push(EcamWindow {
        base: layout::PCI_MMCONFIG_START,
        segment: 0,
        start_bus: 0,
        end_bus: 255,
    });
    let (mem, rsdp) = build(&cfg);
    let (_, tables) = walk(&mem, rsdp);
    assert_eq!(tables.len(), 5);
    for t in &tables {
        assert_eq!(
            sum(&t.bytes),
            0,
            "{:?}",
            String::from_utf8_lossy(t.signature())
        );
        assert_eq!(&t.bytes[10..16], &OEM_ID);
        assert_eq!(&t.bytes[16..24], &OEM_TABLE_ID);
    }
}

#[test]
fn xsdt_lists_fadt_and_madt() {
    let (mem, rsdp) = build(&AcpiConfig::new(2));
    let (rsdp, _) = walk(&mem, rsdp);
    let xsdt = Table::read(&mem, u64_at(&rsdp, 24));
    assert_eq!(xsdt.bytes[8], 1, "revision");
    let sigs: Vec<Vec<u8>> = (0..(xsdt.bytes.len() - 36) / 8)
        .map(|i| {
            Table::read(&mem, u64_at(&xsdt.bytes, 36 + 8 * i))
                .signature()
                .to_vec()
        })
        .collect();
    assert_eq!(sigs, vec![b"FACP".to_vec(), b"APIC".to_vec()]);
}

#[test]
fn madt_describes_cpus_and_ioapic() {
    for num_cpus in [1u8, 3, 8] {
        let (mem, rsdp) = build(&AcpiConfig::new(num_cpus));
        let (_, tables) = walk(&mem, rsdp);
        let madt = &find(&tables, b"APIC").bytes;
        assert_eq!(u32_at(madt, 36), layout::APIC_START as u32);
        assert_eq!(u32_at(madt, 40), MADT_PCAT_COMPAT_FLAG);

        let mut lapic_ids = Vec::new();
        let mut ioapics = Vec::new();
        let mut off = 44;
        while off < madt.len() {
            let (kind, len) = (madt[off], usize::from(madt[off + 1]));
            let s = &madt[off..off + len];
            match kind {
                0 => {
                    assert_eq!(len, 8);
                    assert_eq!(s[2], s[3], "processor UID == APIC id");
                    assert_eq!(u32_at(s, 4), 1, "enabled");
                    lapic_ids.push(s[3]);
                }
                1 => {
                    assert_eq!(len, 12);
                    ioapics.push((s[2], u32_at(s, 4), u32_at(s, 8)));
                }
                other => panic!("unexpected MADT structure type {other}"),
            }
            off += len;
        }
        assert_eq!(off, madt.len());
        assert_eq!(lapic_ids, (0..num_cpus).collect::<Vec<_>>());
        assert_eq!(ioapics, vec![(0, layout::IOAPIC_START as u32, 0)]);
    }
}

#[test]
fn fadt_is_hardware_reduced_with_reset_and_sleep_registers() {
    let (mem, rsdp) = build(&AcpiConfig::new(1));
    let (_, tables) = walk(&mem, rsdp);
    let fadt = &find(&tables, b"FACP").bytes;
    let dsdt = find(&tables, b"DSDT");
    assert_eq!(fadt.len(), 276);
    assert_eq!((fadt[8], fadt[131] & 0xf), (6, 5), "FADT revision 6.5");
    assert_eq!(u32_at(fadt, 40), 0, "32-bit DSDT pointer unused");
    assert_eq!(u64_at(fadt, 140), dsdt.addr, "X_DSDT");
    assert_eq!(u32_at(fadt, 36), 0, "no FACS");
    assert_eq!(u64_at(fadt, 132), 0, "no X_FACS");

    let flags = u32_at(fadt, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");

    let boot_arch = u16_at(fadt, 109);
    assert_ne!(boot_arch & (1 << 5), 0, "CMOS RTC not present");
    assert_ne!(boot_arch & (1 << 2), 0, "VGA not present");
    assert_eq!(boot_arch & (1 << 1), 0, "no 8042 keyboard controller");
    assert_eq!(boot_arch & (1 << 3), 0, "MSI supported");

    let pm_port = |off: usize, what: &str| {
        let gas = &fadt[off..off + 12];
        assert_eq!(gas[0], 1, "{what}: SystemIO");
        assert_eq!(gas[1], 8, "{what}: bit width");
        assert_eq!(gas[2], 0, "{what}: bit offset");
        assert_eq!(gas[3], 1, "{what}: byte access");
        assert_eq!(
            u64_at(gas, 4),
            u64::from(layout::ACPI_PM_PORT),
            "{what}: port"
        );
    };
    pm_port(116, "RESET_REG");
    assert_eq!(fadt[128], layout::ACPI_RESET_VALUE);
    pm_port(244, "SLEEP_CONTROL_REG");
    pm_port(256, "SLEEP_STATUS_REG");
}

#[test]
fn dsdt_describes_s5_com1_and_pvpanic() {
    let ns = dsdt_namespace(&AcpiConfig::new(1));
    let s5 = Obj::Int(layout::ACPI_S5_SLEEP_TYPE.into());
    assert_eq!(
        ns.names["\\_S5_"],
        Obj::Pkg(vec![s5, Obj::Int(0), Obj::Int(0), Obj::Int(0)])
    );
    assert_eq!(ns.devices, ["\\_SB_.COM1", "\\_SB_.PEVT"]);

    let Obj::Int(hid) = ns.names["\\_SB_.COM1._HID"] else {
        panic!("COM1 _HID is not an EISA id");
    };
    assert_eq!(eisa_id(hid), "PNP0501");
    assert_eq!(ns.names["\\_SB_.COM1._UID"], Obj::Int(0));
    let Obj::Buf(crs) = &ns.names["\\_SB_.COM1._CRS"] else {
        panic!("COM1 _CRS is not a buffer");
    };
    assert_eq!(
        resources(crs).unwrap(),
        [
            Resource::Io {
                decode16: true,
                min: layout::COM1_PORT,
                max: layout::COM1_PORT,
                align: 1,
                len: 8,
            },
            // Consumer, edge-triggered, active-high, exclusive.
            Resource::Irq {
                flags: 0b0011,
                irqs: vec![layout::COM1_IRQ],
            },
        ]
    );

    assert_eq!(
        ns.names["\\_SB_.PEVT._HID"],
        Obj::Str("QEMU0001".to_string())
    );
    assert_eq!(ns.names["\\_SB_.PEVT._STA"], Obj::Int(0x0f));
    let Obj::Buf(crs) = &ns.names["\\_SB_.PEVT._CRS"] else {
        panic!("PEVT _CRS is not a buffer");
    };
    assert_eq!(
        resources(crs).unwrap(),
        [Resource::Io {
            decode16: true,
            min: layout::PVPANIC_PORT,
            max: layout::PVPANIC_PORT,
            align: 1,
            len: 1,
        }]
    );
}

#[test]
fn dsdt_raw_bytes_contain_names() {
    let (mem, rsdp) = build(&AcpiConfig::new(1));
    let (_, tables) = walk(&mem, rsdp);
    let dsdt = &find(&tables, b"DSDT").bytes;
    let contains = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"_S5_"));
    assert!(contains(b"QEMU0001"));
    // EisaId("PNP0501") compresses to 0x0105d041, emitted as a DWord constant.
    assert!(contains(&[0x0c, 0x41, 0xd0, 0x05, 0x01]));
}

#[test]
fn dsdt_devices_are_optional() {
    let mut cfg = AcpiConfig::new(1);
    cfg.serial = false;
    cfg.pvpanic = false;
    let ns = dsdt_namespace(&cfg);
    assert!(ns.devices.is_empty());
    assert!(ns.names.contains_key("\\_S5_"));
}

#[test]
fn dsdt_appends_extra_aml() {
    let mut cfg = AcpiConfig::new(1);
    let hid = EISAName::new("PNP0A08");
    let seg = 0u8;
    cfg.add_dsdt_aml(&Device::new(
        Path::new("\\_SB_.PC00"),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_SEG"), &seg),
        ],
    ));
    let ns = dsdt_namespace(&cfg);
    assert_eq!(ns.devices, ["\\_SB_.COM1", "\\_SB_.PEVT", "\\_SB_.PC00"]);
    let Obj::Int(hid) = ns.names["\\_SB_.PC00._HID"] else {
        panic!("PC00 _HID is not an EISA id");
    };
    assert_eq!(eisa_id(hid), "PNP0A08");
}

#[test]
fn mcfg_only_with_ecam_windows() {
    let (mem, rsdp) = build(&AcpiConfig::new(1));
    let (_, tables) = walk(&mem, rsdp);
    assert!(tables.iter().all(|t| t.signature() != b"MCFG"));

    let mut cfg = AcpiConfig::new(1);
    let windows = [
        EcamWindow {
            base: layout::PCI_MMCONFIG_START,
            segment: 0,
            start_bus: 0,
            end_bus: 255,
        },
        EcamWindow {
            base: layout::PCI_MMCONFIG_START + (256 << 20),
            segment: 1,
            start_bus: 0,
            end_bus: 15,
        },
    ];
    cfg.ecam_windows.extend(windows);
    let (mem, rsdp) = build(&cfg);
    let (_, tables) = walk(&mem, rsdp);
    let mcfg = &find(&tables, b"MCFG").bytes;
    assert_eq!(mcfg.len(), 44 + 16 * windows.len());
    for (i, w) in windows.iter().enumerate() {
        let e = &mcfg[44 + 16 * i..60 + 16 * i];
        assert_eq!(u64_at(e, 0), w.base);
        assert_eq!(u16_at(e, 8), w.segment);
        assert_eq!((e[10], e[11]), (w.start_bus, w.end_bus));
    }
}

#[test]
fn invalid_ecam_window_is_an_error() {
    let mut cfg = AcpiConfig::new(1);
    cfg.ecam_windows.push(EcamWindow {
        base: layout::PCI_MMCONFIG_START,
        segment: 3,
        start_bus: 2,
        end_bus: 1,
    });
    let err = create_acpi_tables(&guest_memory(), &cfg).unwrap_err();
    assert!(
        matches!(
            err,
            AcpiError::InvalidEcamWindow {
                index: 0,
                segment: 3,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn tables_are_packed_aligned_and_below_the_limit() {
    for num_cpus in [1, MAX_CPUS] {
        let mut cfg = AcpiConfig::new(num_cpus);
        cfg.ecam_windows.push(EcamWindow {
            base: layout::PCI_MMCONFIG_START,
            segment: 0,
            start_bus: 0,
            end_bus: 255,
        });
        let (mem, rsdp) = build(&cfg);
        let (_, mut tables) = walk(&mem, rsdp);
        let madt = find(&tables, b"APIC");
        assert_eq!(madt.bytes.len(), 44 + 8 * usize::from(num_cpus) + 12);

        tables.sort_by_key(|t| t.addr);
        let mut prev_end = rsdp.0 + 36;
        for t in &tables {
            assert_eq!(t.addr % TABLE_ALIGNMENT, 0);
            assert!(t.addr >= prev_end, "tables overlap at {:#x}", t.addr);
            prev_end = t.end();
        }
        assert!(prev_end <= layout::ACPI_TABLES_END);
    }
}

#[test]
fn cpu_count_is_checked() {
    for bad in [0, MAX_CPUS + 1] {
        let err = create_acpi_tables(&guest_memory(), &AcpiConfig::new(bad)).unwrap_err();
        assert!(
            matches!(err, AcpiError::InvalidCpuCount(n) if n == bad),
            "{err}"
        );
    }
}

#[test]
fn tables_that_do_not_fit_are_an_error_and_nothing_is_written() {
    let mut cfg = AcpiConfig::new(1);
    let room = (layout::ACPI_TABLES_END - layout::RSDP_START) as usize;
    cfg.extra_dsdt_aml = vec![0; room];
    let mem = guest_memory();
    let err = create_acpi_tables(&mem, &cfg).unwrap_err();
    assert!(
        matches!(err, AcpiError::DoesNotFit { table: "DSDT", .. }),
        "{err}"
    );
    assert!(read(&mem, layout::RSDP_START, room).iter().all(|&b| b == 0));
}

#[test]
fn guest_memory_errors_name_the_table() {
    // RAM that does not cover the EBDA.
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let err = create_acpi_tables(&mem, &AcpiConfig::new(1)).unwrap_err();
    assert!(
        matches!(err, AcpiError::GuestMemory { table: "RSDP", addr, .. } if addr == layout::RSDP_START),
        "{err}"
    );
}

/// Writes the tables to `$ACPI_DUMP_DIR/<SIG>.dat` for `iasl -d` (run with `--ignored`): 4
/// vCPUs, two PCI roots and hotplug on, so every object viaduct can emit is there.
///
///     ACPI_DUMP_DIR=/tmp/acpi cargo test -p arch dump_tables_for_iasl -- --ignored
///     cd /tmp/acpi && iasl -d DSDT.dat && iasl DSDT.dsl   # disassemble, then recompile
#[test]
#[ignore = "manual: dumps the tables for iasl"]
fn dump_tables_for_iasl() {
    let Some(dir) = std::env::var_os("ACPI_DUMP_DIR") else {
        return;
    };
    let mut cfg = AcpiConfig::new(4);
    cfg.add_pci_roots(&[pci_root(0), pci_root(1)]);
    cfg.hotplug = true;
    let (mem, rsdp) = build(&cfg);
    let (rsdp_bytes, tables) = walk(&mem, rsdp);
    let dir = std::path::PathBuf::from(dir);
    std::fs::write(dir.join("RSDP.dat"), rsdp_bytes).unwrap();
    for t in &tables {
        let name = String::from_utf8_lossy(t.signature()).into_owned();
        std::fs::write(dir.join(format!("{name}.dat")), &t.bytes).unwrap();
    }
}

/// A PCI root as the VMM describes segment `segment`.
fn pci_root(segment: u16) -> PciRootDescription {
    PciRootDescription {
        segment,
        ecam_base: layout::ecam_window(segment),
        ecam_size: 1 << 20,
        mmio32: (0xC000_0000, 0xD3FF_FFFF),
        mmio64: Some((0x1_0000_0000, 0xFF_FFFF_FFFF)),
        io: Some((0x1000, 0x7FFF)),
        legacy_config_ports: segment == 0,
    }
}

fn hotplug_config(segments: &[u16]) -> AcpiConfig {
    let mut cfg = AcpiConfig::new(2);
    cfg.hotplug = true;
    let roots: Vec<_> = segments.iter().copied().map(pci_root).collect();
    cfg.add_pci_roots(&roots);
    cfg
}

/// An AML integer constant, encoded the shortest way (ZeroOp, OneOp, Byte/Word/DWordConst).
fn aml_int(v: u32) -> Vec<u8> {
    match v {
        0 => vec![0x00],
        1 => vec![0x01],
        2..=0xff => vec![0x0a, v as u8],
        0x100..=0xffff => [&[0x0b][..], &(v as u16).to_le_bytes()].concat(),
        _ => [&[0x0c][..], &v.to_le_bytes()].concat(),
    }
}

/// `\` MultiNamePrefix(3) `_SB_` `a` `b`: an absolute three-segment name.
fn sb_path(a: &[u8; 4], b: &[u8; 4]) -> Vec<u8> {
    [&b"\\\x2f\x03_SB_"[..], a, b].concat()
}

/// `If (pkglen) { body }` with a one-byte PkgLength (every If here is short).
fn aml_if(body: &[u8]) -> Vec<u8> {
    assert!(body.len() + 1 < 0x40);
    [&[0xa0, body.len() as u8 + 1][..], body].concat()
}

fn eisa(ns: &aml_reader::Namespace, path: &str) -> String {
    match ns.names.get(path) {
        Some(Obj::Int(v)) => eisa_id(*v),
        other => panic!("{path} is not an EISA id: {other:?}"),
    }
}

fn crs(ns: &aml_reader::Namespace, device: &str) -> Vec<Resource> {
    match ns.names.get(&format!("{device}._CRS")) {
        Some(Obj::Buf(b)) => resources(b).unwrap(),
        other => panic!("{device}._CRS is not a buffer: {other:?}"),
    }
}

const HOTPLUG_DEVICES: [&str; 4] = ["\\_SB_.PWRB", "\\_SB_.PHPR", "\\_SB_.GED_", "\\_SB_.GEC_"];

#[test]
fn without_hotplug_no_hotplug_object_exists() {
    let mut cfg = AcpiConfig::new(2);
    cfg.add_pci_roots(&[pci_root(0), pci_root(1)]);
    assert!(!cfg.hotplug, "off by default");
    let ns = dsdt_namespace(&cfg);
    assert_eq!(
        ns.devices,
        [
            "\\_SB_.COM1",
            "\\_SB_.PEVT",
            "\\_SB_.PC00",
            "\\_SB_.PC01",
            "\\_SB_.MBRD"
        ]
    );
    assert!(ns.methods.is_empty() && ns.mutexes.is_empty());
    assert!(ns.regions.is_empty() && ns.fields.is_empty());
    // Each root holds exactly what it held before hotplug existed.
    for root in ["\\_SB_.PC00", "\\_SB_.PC01"] {
        let children: Vec<&str> = ns
            .paths()
            .into_iter()
            .filter_map(|p| p.strip_prefix(root)?.strip_prefix('.'))
            .collect();
        assert_eq!(
            children,
            ["_ADR", "_BBN", "_CCA", "_CID", "_CRS", "_HID", "_PRT", "_SEG", "_UID"]
        );
    }
    let (mem, rsdp) = build(&cfg);
    let (_, tables) = walk(&mem, rsdp);
    let dsdt = &find(&tables, b"DSDT").bytes;
    for name in [
        &b"GED_"[..],
        b"GEC_",
        b"PWRB",
        b"PHPR",
        b"S001",
        b"PCNT",
        b"_EJ0",
    ] {
        assert!(
            !dsdt.windows(4).any(|w| w == name),
            "{}",
            String::from_utf8_lossy(name)
        );
    }
}

#[test]
fn hotplug_adds_the_platform_devices_before_the_roots() {
    let ns = dsdt_namespace(&hotplug_config(&[0]));
    let top: Vec<&str> = ns
        .devices
        .iter()
        .map(String::as_str)
        .filter(|d| d.matches('.').count() == 1)
        .collect();
    assert_eq!(
        top,
        [
            "\\_SB_.COM1",
            "\\_SB_.PEVT",
            "\\_SB_.PWRB",
            "\\_SB_.PHPR",
            "\\_SB_.GED_",
            "\\_SB_.GEC_",
            "\\_SB_.PC00",
            "\\_SB_.MBRD"
        ]
    );
    // Hotplug without PCI roots still has its platform devices (PSCN scans nothing).
    let mut cfg = AcpiConfig::new(1);
    cfg.hotplug = true;
    let ns = dsdt_namespace(&cfg);
    for d in HOTPLUG_DEVICES {
        assert!(ns.devices.iter().any(|x| x == d), "{d}");
    }
    assert!(ns.methods["\\_SB_.PHPR.PSCN"].body.is_empty());
}

#[test]
fn hotplug_may_be_set_before_or_after_adding_the_roots() {
    let after = hotplug_config(&[0, 1]);
    let mut before = AcpiConfig::new(2);
    before.hotplug = true;
    before.add_pci_roots(&[pci_root(0)]);
    before.add_pci_roots(&[pci_root(1)]);
    assert_eq!(
        dsdt::create_dsdt(&before),
        dsdt::create_dsdt(&after),
        "the AML is built with the tables"
    );
}

#[test]
fn ged_has_its_interrupt_in_crs_and_reads_its_register_in_evt() {
    let ns = dsdt_namespace(&hotplug_config(&[0]));
    let ged = "\\_SB_.GED_";
    assert_eq!(
        ns.names[&format!("{ged}._HID")],
        Obj::Str("ACPI0013".into())
    );
    assert_eq!(ns.names[&format!("{ged}._UID")], Obj::Int(0));
    // Only the interrupt: Linux's evged rejects any other descriptor in a GED's _CRS.
    assert_eq!(
        crs(&ns, ged),
        [Resource::Irq {
            // Consumer, edge-triggered, active-high, exclusive.
            flags: 0b0011,
            irqs: vec![layout::ACPI_GED_GSI],
        }]
    );
    // The register block is claimed by GEC_.
    let gec = "\\_SB_.GEC_";
    assert_eq!(eisa(&ns, &format!("{gec}._HID")), "PNP0A06");
    assert_eq!(ns.names[&format!("{gec}._STA")], Obj::Int(0x0b));
    assert_eq!(
        crs(&ns, gec),
        [Resource::Memory32Fixed {
            writable: false,
            base: layout::ACPI_GED_MMIO_START as u32,
            len: layout::ACPI_GED_MMIO_SIZE as u32,
        }]
    );
    // OperationRegion(GDST, SystemMemory, ACPI_GED_MMIO_START, 4), Field(DWordAcc) { GDAT, 32 }
    assert_eq!(
        ns.regions[&format!("{ged}.GDST")],
        aml_reader::Region {
            space: 0,
            offset: layout::ACPI_GED_MMIO_START,
            len: layout::ACPI_GED_MMIO_SIZE,
        }
    );
    let gdat = &ns.fields[&format!("{ged}.GDAT")];
    assert_eq!(gdat.region, format!("{ged}.GDST"));
    assert_eq!((gdat.bit_offset, gdat.bits), (0, 32));
    assert_eq!(gdat.flags & 0x0f, 3, "DWordAcc");
    assert_eq!(gdat.flags >> 5, 2, "WriteAsZeros: no read-modify-write");

    // _EVT(Arg0): Local0 = GDAT; If (Local0 & 4) { PSCN() }; If (Local0 & 8) { Notify(PWRB, 0x80) }
    let evt = &ns.methods[&format!("{ged}._EVT")];
    assert_eq!((evt.args, evt.serialized), (1, false));
    let expected = [
        [&[0x70][..], b"GDAT", &[0x60]].concat(),
        aml_if(
            &[
                &[0x7b, 0x60, 0x0a, 0x04, 0x00][..],
                &sb_path(b"PHPR", b"PSCN"),
            ]
            .concat(),
        ),
        aml_if(
            &[
                &[0x7b, 0x60, 0x0a, 0x08, 0x00, 0x86, b'\\', 0x2e][..],
                b"_SB_PWRB",
                &[0x0a, 0x80],
            ]
            .concat(),
        ),
    ]
    .concat();
    assert_eq!(evt.body, expected);
    assert_eq!(GED_PCI_DEVICES_CHANGED, 4);
    assert_eq!(GED_POWER_BUTTON, 8);
}

#[test]
fn power_button_is_a_control_method_button() {
    let ns = dsdt_namespace(&hotplug_config(&[0]));
    assert_eq!(eisa(&ns, "\\_SB_.PWRB._HID"), "PNP0C0C");
    assert_eq!(ns.names["\\_SB_.PWRB._UID"], Obj::Int(0));
}

#[test]
fn hotplug_controller_has_its_registers_lock_and_methods() {
    let ns = dsdt_namespace(&hotplug_config(&[0, 1, 7]));
    let phpr = "\\_SB_.PHPR";
    assert_eq!(eisa(&ns, &format!("{phpr}._HID")), "PNP0A06");
    assert_eq!(
        ns.names[&format!("{phpr}._UID")],
        Obj::Str("PCI Hotplug Controller".into())
    );
    assert_eq!(ns.names[&format!("{phpr}._STA")], Obj::Int(0x0b));
    assert_eq!(
        crs(&ns, phpr),
        [Resource::Memory32Fixed {
            writable: true,
            base: layout::PCI_HOTPLUG_MMIO_START as u32,
            len: layout::PCI_HOTPLUG_MMIO_SIZE as u32,
        }]
    );
    assert_eq!(ns.mutexes[&format!("{phpr}.BLCK")], 0);
    assert_eq!(
        ns.regions[&format!("{phpr}.PCST")],
        aml_reader::Region {
            space: 0,
            offset: layout::PCI_HOTPLUG_MMIO_START,
            len: 16,
        }
    );
    for (i, name) in ["PCIU", "PCID", "B0EJ", "PSEG"].iter().enumerate() {
        let f = &ns.fields[&format!("{phpr}.{name}")];
        assert_eq!(f.region, format!("{phpr}.PCST"), "{name}");
        assert_eq!((f.bit_offset, f.bits), (32 * i, 32), "{name}");
        assert_eq!(f.flags & 0x0f, 3, "{name}: DWordAcc");
    }

    // PCEJ(slot, segment): Acquire(BLCK, 0xFFFF); PSEG = Arg1; B0EJ = 1 << Arg0; Release(BLCK)
    let pcej = &ns.methods[&format!("{phpr}.PCEJ")];
    assert_eq!(pcej.args, 2);
    let expected = [
        &[0x5b, 0x23][..],
        b"BLCK",
        &[0xff, 0xff, 0x70, 0x69],
        b"PSEG",
        &[0x70, 0x79, 0x01, 0x68, 0x00],
        b"B0EJ",
        &[0x5b, 0x27],
        b"BLCK",
    ]
    .concat();
    assert_eq!(pcej.body, expected);

    // PSCN: every root's PCNT, in segment order.
    let pscn = &ns.methods[&format!("{phpr}.PSCN")];
    assert_eq!(pscn.args, 0);
    let expected = [
        sb_path(b"PC00", b"PCNT"),
        sb_path(b"PC01", b"PCNT"),
        sb_path(b"PC07", b"PCNT"),
    ]
    .concat();
    assert_eq!(pscn.body, expected);
}

#[test]
fn every_root_has_ejectable_slots_1_to_31_and_its_scan_methods() {
    let segments = [0u16, 1, 0x5f];
    let ns = dsdt_namespace(&hotplug_config(&segments));
    for segment in segments {
        let root = root_path(segment);
        // The root itself is unchanged: still a host bridge with its _SEG and _PRT.
        assert_eq!(eisa(&ns, &format!("{root}._HID")), "PNP0A08");
        assert_eq!(ns.names[&format!("{root}._SEG")], Obj::Int(segment.into()));
        assert!(ns.names.contains_key(&format!("{root}._PRT")));
        assert!(
            !ns.devices.contains(&format!("{root}.S000")),
            "the host bridge's slot 0 is not ejectable"
        );

        let mut dvnt = Vec::new();
        for slot in 1..=31u8 {
            let dev = format!("{root}.{}", slot_name(slot));
            assert!(ns.devices.contains(&dev), "{dev}");
            assert_eq!(
                ns.names[&format!("{dev}._ADR")],
                Obj::Int(u64::from(slot) << 16)
            );
            assert_eq!(ns.names[&format!("{dev}._SUN")], Obj::Int(slot.into()));
            // _EJ0(Arg0): \_SB_.PHPR.PCEJ(_SUN, segment)
            let ej0 = &ns.methods[&format!("{dev}._EJ0")];
            assert_eq!(ej0.args, 1, "{dev}._EJ0");
            let call = [
                sb_path(b"PHPR", b"PCEJ"),
                b"_SUN".to_vec(),
                aml_int(segment.into()),
            ]
            .concat();
            assert_eq!(ej0.body, call, "{dev}._EJ0");
            // DVNT: If (Arg0 & (1 << slot)) { Notify(Snnn, Arg1) }
            let test = [&[0x7b, 0x68][..], &aml_int(1 << slot), &[0x00]].concat();
            let notify = [&[0x86][..], slot_name(slot).as_bytes(), &[0x69]].concat();
            dvnt.extend(aml_if(&[test, notify].concat()));
        }
        assert_eq!(slot_name(1), "S001");
        assert_eq!(slot_name(31), "S031");

        let m = &ns.methods[&format!("{root}.DVNT")];
        assert_eq!(m.args, 2);
        assert_eq!(m.body, dvnt, "{root}.DVNT");

        // PCNT: lock; PSEG = segment; DVNT(PCIU, 1); DVNT(PCID, 3); unlock
        let m = &ns.methods[&format!("{root}.PCNT")];
        assert_eq!(m.args, 0);
        let expected = [
            vec![0x5b, 0x23],
            sb_path(b"PHPR", b"BLCK"),
            vec![0xff, 0xff, 0x70],
            aml_int(segment.into()),
            sb_path(b"PHPR", b"PSEG"),
            b"DVNT".to_vec(),
            sb_path(b"PHPR", b"PCIU"),
            vec![0x01],
            b"DVNT".to_vec(),
            sb_path(b"PHPR", b"PCID"),
            vec![0x0a, 0x03],
            vec![0x5b, 0x27],
            sb_path(b"PHPR", b"BLCK"),
        ]
        .concat();
        assert_eq!(m.body, expected, "{root}.PCNT");
    }
}

#[test]
fn ninety_six_hotplug_roots_fit_with_every_checksum_zero() {
    let segments: Vec<u16> = (0..96).collect();
    let mut cfg = hotplug_config(&segments);
    cfg.num_cpus = MAX_CPUS;
    let (mem, rsdp) = build(&cfg);
    let (_, tables) = walk(&mem, rsdp);
    for t in &tables {
        assert_eq!(
            sum(&t.bytes),
            0,
            "{:?}",
            String::from_utf8_lossy(t.signature())
        );
        assert!(t.end() <= layout::ACPI_TABLES_END);
    }
    let dsdt = find(&tables, b"DSDT");
    let ns = aml_reader::decode(&dsdt.bytes[36..]).unwrap();
    assert_eq!(
        ns.devices.iter().filter(|d| d.ends_with(".S031")).count(),
        96
    );
    eprintln!(
        "DSDT with 96 hotplug roots: {} bytes; tables end at {:#x} (limit {:#x})",
        dsdt.bytes.len(),
        tables.iter().map(Table::end).max().unwrap(),
        layout::ACPI_TABLES_END
    );
}

/// What `iasl` (ACPICA's compiler, Debian's `acpica-tools`) and `acpiexec` make of the hotplug
/// DSDT: it must disassemble, recompile without errors, and its methods must run. Manual (run
/// with `--ignored`); skipped when the tools are not installed.
///
/// `acpiexec` simulates SystemMemory regions as plain memory (no read-to-clear), so the script
/// stores the event flags and bitmaps first, then runs the GED's `_EVT` (both segments notify
/// the same slots) and a slot's `_EJ0`, and checks the notifications and the B0EJ write.
#[test]
#[ignore = "manual: needs iasl and acpiexec"]
fn iasl_compiles_and_acpiexec_runs_the_hotplug_dsdt() {
    use std::process::Command;
    let have = |tool: &str| Command::new(tool).arg("-v").output().is_ok();
    if !have("iasl") || !have("acpiexec") {
        eprintln!("iasl/acpiexec not installed (apt-get install acpica-tools): skipped");
        return;
    }
    let dir = std::env::temp_dir().join(format!("viaduct-acpi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mem, rsdp) = build(&hotplug_config(&[0, 1]));
    let (_, tables) = walk(&mem, rsdp);
    std::fs::write(dir.join("DSDT.dat"), &find(&tables, b"DSDT").bytes).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(args[0])
            .args(&args[1..])
            .current_dir(&dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        eprintln!("$ {}\n{text}", args.join(" "));
        assert!(out.status.success(), "{} failed", args[0]);
        text
    };
    run(&["iasl", "-d", "DSDT.dat"]);
    let compiled = run(&["iasl", "-p", "DSDT-recompiled", "DSDT.dsl"]);
    assert!(compiled.contains("Compilation successful. 0 Errors"));

    std::fs::write(
        dir.join("TEST.asl"),
        r#"DefinitionBlock ("", "SSDT", 2, "VIADCT", "HPTEST", 1)
{
    External (\_SB.GED._EVT, MethodObj)
    External (\_SB.GED.GDAT, FieldUnitObj)
    External (\_SB.PHPR.PCIU, FieldUnitObj)
    External (\_SB.PHPR.PCID, FieldUnitObj)
    External (\_SB.PHPR.PSEG, FieldUnitObj)
    External (\_SB.PHPR.B0EJ, FieldUnitObj)
    External (\_SB.PC01.S005._EJ0, MethodObj)
    Method (TEVT, 0) {
        \_SB.PHPR.PCIU = 0x22
        \_SB.PHPR.PCID = 0x08
        \_SB.GED.GDAT = 0x0C
        \_SB.GED._EVT (10)
    }
    Method (TEJ0, 0) {
        \_SB.PHPR.PSEG = 0
        \_SB.PC01.S005._EJ0 (0)
        Return (Package () { \_SB.PHPR.PSEG, \_SB.PHPR.B0EJ })
    }
}
"#,
    )
    .unwrap();
    run(&["iasl", "TEST.asl"]);
    let out = run(&[
        "acpiexec",
        "-b",
        "execute \\TEVT; execute \\TEJ0",
        "DSDT.dat",
        "TEST.aml",
    ]);
    for notify in [
        "Notify on [S001]", // PCIU bit 1: device check, on each segment
        "Notify on [S005]", // PCIU bit 5
        "Notify on [S003]", // PCID bit 3: eject request
        "Notify on [PWRB]", // the power button
    ] {
        assert!(out.contains(notify), "{notify}");
    }
    assert_eq!(out.matches("(Device Check)").count(), 4);
    assert_eq!(out.matches("(Eject Request)").count(), 2);
    assert!(out.contains("Value 0x80"));
    // _EJ0 of PC01.S005 selected segment 1 and wrote bit 5 to B0EJ.
    let package = out.split("Evaluating \\TEJ0").nth(1).unwrap();
    assert!(package.contains("[Integer] = 0000000000000001"));
    assert!(package.contains("[Integer] = 0000000000000020"));
    assert!(!out.contains("AE_"), "an ACPICA error");
    std::fs::remove_dir_all(&dir).unwrap();
}
