//! The ACPI tables of a viaduct guest: RSDP, XSDT, FADT, DSDT, MADT and (when PCI ECAM windows
//! exist) MCFG.
//!
//! [`create_acpi_tables`] builds every table with the `acpi_tables` crate and writes them into
//! guest memory: the RSDP at [`layout::RSDP_START`], the other tables packed after it (each
//! aligned to [`TABLE_ALIGNMENT`]), all below [`layout::ACPI_TABLES_END`]. The caller hands the
//! returned RSDP address to the kernel (`boot_params.acpi_rsdp_addr` or PVH `rsdp_paddr`).
//!
//! The platform is hardware-reduced ACPI: no PM1/GPE blocks, no SCI; poweroff and reboot go
//! through the FADT sleep-control and reset registers at [`layout::ACPI_PM_PORT`]. Events the
//! platform raises (PCI hotplug, the power button) go through an ACPI Generic Event Device,
//! described when [`AcpiConfig::hotplug`] is set.

mod dsdt;
mod fadt;
mod hotplug;
mod madt;
mod mcfg;
mod pci_roots;

pub use hotplug::slot_name;
pub use pci_roots::{root_path, PciRootDescription};
#[cfg(test)]
mod tests;

use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::layout;

/// OEM ID written into every table header.
pub const OEM_ID: [u8; 6] = *b"VIADCT";
/// OEM table ID written into every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"VIADUCT ";
/// OEM revision written into every table header.
pub const OEM_REVISION: u32 = 1;

/// Alignment of every table after the RSDP.
pub const TABLE_ALIGNMENT: u64 = 16;

/// Largest number of vCPUs the MADT describes: xAPIC ids are 8 bits and 0xff is the broadcast id.
pub const MAX_CPUS: u8 = 254;

/// One PCI Express ECAM (enhanced configuration access mechanism) window, listed in the MCFG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcamWindow {
    /// Guest physical address of the configuration space of bus 0 of this segment (as in the
    /// MCFG: bus `start_bus` is at `base + (start_bus << 20)`).
    pub base: u64,
    /// PCI segment group number.
    pub segment: u16,
    /// First bus number decoded by this window.
    pub start_bus: u8,
    /// Last bus number (inclusive) decoded by this window.
    pub end_bus: u8,
}

/// What the ACPI tables describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs, `1..=MAX_CPUS`; vCPU `i` has APIC id `i`.
    pub num_cpus: u8,
    /// Describe COM1 (`\_SB_.COM1`, PNP0501) in the DSDT.
    pub serial: bool,
    /// Describe the pvpanic device (`\_SB_.PEVT`, QEMU0001) in the DSDT.
    pub pvpanic: bool,
    /// PCI ECAM windows; an MCFG is emitted only when this is non-empty.
    pub ecam_windows: Vec<EcamWindow>,
    /// PCI roots, each a PNP0A08 host bridge `\_SB_.PCxx` in the DSDT (followed by the
    /// PNP0C02 device reserving their ECAM windows). Use [`AcpiConfig::add_pci_roots`], which
    /// also lists their ECAM windows for the MCFG.
    pub pci_roots: Vec<PciRootDescription>,
    /// Describe ACPI PCI hotplug and the power button: the Generic Event Device
    /// `\_SB_.GED_` (interrupt [`layout::ACPI_GED_GSI`], event register at
    /// [`layout::ACPI_GED_MMIO_START`]), the power button `\_SB_.PWRB`, the hotplug controller
    /// `\_SB_.PHPR` (registers at [`layout::PCI_HOTPLUG_MMIO_START`]) and, in every root of
    /// [`AcpiConfig::pci_roots`], ejectable slot objects `S001`…`S031`. Off by default; when
    /// off, none of these objects exist.
    pub hotplug: bool,
    /// Serialised AML appended at the root scope of the DSDT, after the built-in objects and
    /// the PCI roots. Objects must use absolute names (`\_SB_.XXXX`) or wrap themselves in
    /// `Scope(\_SB_)`. Use [`AcpiConfig::add_dsdt_aml`] to append.
    pub extra_dsdt_aml: Vec<u8>,
}

impl AcpiConfig {
    /// A configuration for `num_cpus` vCPUs with COM1 and pvpanic, no PCI, no hotplug, no
    /// extra AML.
    pub fn new(num_cpus: u8) -> Self {
        AcpiConfig {
            num_cpus,
            serial: true,
            pvpanic: true,
            ecam_windows: Vec::new(),
            pci_roots: Vec::new(),
            hotplug: false,
            extra_dsdt_aml: Vec::new(),
        }
    }

    /// Appends the serialised `aml` (e.g. an `acpi_tables::aml::Device`) to the DSDT's root
    /// scope.
    pub fn add_dsdt_aml(&mut self, aml: &dyn Aml) {
        aml.to_aml_bytes(&mut self.extra_dsdt_aml);
    }
}

/// Errors building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The vCPU count is outside `1..=MAX_CPUS`.
    #[error("invalid vCPU count {0} for the MADT (must be 1..={MAX_CPUS})")]
    InvalidCpuCount(u8),
    /// An ECAM window's bus range is empty.
    #[error("ECAM window {index} (segment {segment}): start bus {start_bus} > end bus {end_bus}")]
    InvalidEcamWindow {
        /// Index in [`AcpiConfig::ecam_windows`].
        index: usize,
        /// The window's PCI segment.
        segment: u16,
        /// The window's first bus.
        start_bus: u8,
        /// The window's last bus.
        end_bus: u8,
    },
    /// A table does not fit below [`layout::ACPI_TABLES_END`].
    #[error(
        "ACPI table {table} ({len} bytes at {addr:#x}) does not fit below {limit:#x}",
        limit = layout::ACPI_TABLES_END
    )]
    DoesNotFit {
        /// Signature of the table.
        table: &'static str,
        /// Guest physical address the table would start at.
        addr: u64,
        /// Size of the table in bytes.
        len: usize,
    },
    /// Writing a table into guest memory failed.
    #[error("failed to write ACPI table {table} ({len} bytes) at {addr:#x}: {source}")]
    GuestMemory {
        /// Signature of the table.
        table: &'static str,
        /// Guest physical address of the table.
        addr: u64,
        /// Size of the table in bytes.
        len: usize,
        /// The underlying guest-memory error.
        #[source]
        source: GuestMemoryError,
    },
}

/// A table built in host memory, waiting to be written at `addr`.
struct PlacedTable {
    name: &'static str,
    addr: GuestAddress,
    bytes: Vec<u8>,
}

/// Hands out consecutive, aligned guest addresses in `[RSDP_START, ACPI_TABLES_END)` and keeps
/// the tables placed so far.
struct Placer {
    next: u64,
    tables: Vec<PlacedTable>,
}

impl Placer {
    fn new() -> Self {
        Placer {
            next: layout::RSDP_START,
            tables: Vec::new(),
        }
    }

    /// The address the next table will be placed at.
    fn next_addr(&self) -> u64 {
        self.next
    }

    /// Places `bytes` at the next free aligned address and returns that address.
    fn place(&mut self, name: &'static str, bytes: Vec<u8>) -> Result<GuestAddress, AcpiError> {
        let addr = self.next;
        let too_big = AcpiError::DoesNotFit {
            table: name,
            addr,
            len: bytes.len(),
        };
        let end = u64::try_from(bytes.len())
            .ok()
            .and_then(|len| addr.checked_add(len))
            .filter(|&end| end <= layout::ACPI_TABLES_END)
            .ok_or(too_big)?;
        // `end <= ACPI_TABLES_END`, far from u64::MAX: aligning cannot overflow.
        self.next = end.next_multiple_of(TABLE_ALIGNMENT);
        self.tables.push(PlacedTable {
            name,
            addr: GuestAddress(addr),
            bytes,
        });
        Ok(GuestAddress(addr))
    }

    /// Writes every placed table into `mem`.
    fn write_all<M: GuestMemory>(&self, mem: &M) -> Result<(), AcpiError> {
        for t in &self.tables {
            mem.write_slice(&t.bytes, t.addr)
                .map_err(|source| AcpiError::GuestMemory {
                    table: t.name,
                    addr: t.addr.0,
                    len: t.bytes.len(),
                    source,
                })?;
        }
        Ok(())
    }
}

/// Serialises an `acpi_tables` object into bytes.
fn to_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

/// Builds the ACPI tables described by `cfg` and writes them into `mem`.
///
/// Nothing is written unless every table fits below [`layout::ACPI_TABLES_END`]. Returns the
/// guest physical address of the RSDP ([`layout::RSDP_START`]).
pub fn create_acpi_tables<M: GuestMemory>(
    mem: &M,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    let mut placer = Placer::new();
    // The RSDP comes first, at `RSDP_START`; its content (the XSDT address) is only known once
    // every other table is placed, so reserve its slot now and fill it in last.
    let rsdp_addr = placer.place("RSDP", vec![0; Rsdp::len()])?;
    debug_assert_eq!(rsdp_addr.0, layout::RSDP_START);

    let dsdt = placer.place("DSDT", dsdt::create_dsdt(cfg))?;
    let fadt = placer.place("FACP", fadt::create_fadt(dsdt))?;
    let madt = placer.place("APIC", madt::create_madt(cfg.num_cpus)?)?;
    let mut xsdt_entries = vec![fadt, madt];
    if !cfg.ecam_windows.is_empty() {
        xsdt_entries.push(placer.place("MCFG", mcfg::create_mcfg(&cfg.ecam_windows)?)?);
    }

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for entry in &xsdt_entries {
        xsdt.add_entry(entry.0);
    }
    let xsdt_addr = placer.place("XSDT", to_bytes(&xsdt))?;
    placer.tables[0].bytes = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr.0));

    placer.write_all(mem)?;
    log::debug!(
        "ACPI tables at {:#x}..{:#x}",
        rsdp_addr.0,
        placer.next_addr()
    );
    Ok(rsdp_addr)
}
