//! Tests of the ACPI tables, read back from guest memory the way a guest would find them.

mod aml_reader;

use acpi_tables::aml::{Device, EISAName, Name, Path};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use self::aml_reader::{eisa_id, resources, Obj, Resource};
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

/// Writes the tables to `$ACPI_DUMP_DIR/<SIG>.dat` for `iasl -d` (run with `--ignored`).
#[test]
#[ignore = "manual: dumps the tables for iasl"]
fn dump_tables_for_iasl() {
    let Some(dir) = std::env::var_os("ACPI_DUMP_DIR") else {
        return;
    };
    let mut cfg = AcpiConfig::new(4);
    cfg.ecam_windows.push(EcamWindow {
        base: layout::PCI_MMCONFIG_START,
        segment: 0,
        start_bus: 0,
        end_bus: 255,
    });
    let (mem, rsdp) = build(&cfg);
    let (rsdp_bytes, tables) = walk(&mem, rsdp);
    let dir = std::path::PathBuf::from(dir);
    std::fs::write(dir.join("RSDP.dat"), rsdp_bytes).unwrap();
    for t in &tables {
        let name = String::from_utf8_lossy(t.signature()).into_owned();
        std::fs::write(dir.join(format!("{name}.dat")), &t.bytes).unwrap();
    }
}
