//! DSDT objects for ACPI PCI hotplug and the power button, on a hardware-reduced platform
//! (emitted only when [`AcpiConfig::hotplug`](super::AcpiConfig::hotplug) is set).
//!
//! - `\_SB_.GED_` (ACPI0013), the Generic Event Device: its interrupt
//!   ([`layout::ACPI_GED_GSI`]) makes Linux's `evged` driver run `_EVT`, which reads the event
//!   register at [`layout::ACPI_GED_MMIO_START`] (reading clears it) and, per flag, rescans the
//!   hotplug slots (`\_SB_.PHPR.PSCN`) or notifies the power button.
//! - `\_SB_.GEC_` (PNP0A06): claims the GED's register block. It cannot be in the GED's own
//!   `_CRS`: Linux's `evged` fails its probe on any descriptor there that is not an interrupt
//!   ("unable to parse IRQ resource"), so, as in cloud-hypervisor, a second device holds it.
//! - `\_SB_.PWRB` (PNP0C0C): the control-method power button.
//! - `\_SB_.PHPR` (PNP0A06): the PCI hotplug controller's register block at
//!   [`layout::PCI_HOTPLUG_MMIO_START`] (PCIU, PCID, B0EJ, PSEG) with `PCEJ` (eject a slot) and
//!   `PSCN` (scan every segment).
//! - In every PCI root `\_SB_.PCxx` ([`slots_aml`]): slot devices `S001`…`S031` with `_ADR`,
//!   `_SUN` and `_EJ0`, and the methods `DVNT` and `PCNT`. Slot 0 is the host bridge and gets
//!   no slot object, so it can never be ejected.
//!
//! The register protocol is cloud-hypervisor's; the device side is `devices::acpi_ged` and
//! `devices::pci_hotplug`.

use acpi_tables::aml::{
    Acquire, And, Arg, Device, EISAName, Field, FieldAccessType, FieldEntry, FieldLockRule,
    FieldUpdateRule, If, Interrupt, Local, Memory32Fixed, Method, MethodCall, Mutex, Name, Notify,
    OpRegion, OpRegionSpace, Path, Release, ResourceTemplate, ShiftLeft, Store, ONE, ZERO,
};
use acpi_tables::Aml;

use super::pci_roots::root_path;
use super::PciRootDescription;
use crate::layout;

/// GED event flag (bit 2): PCI devices changed; `devices::acpi_ged::GED_PCI_DEVICES_CHANGED`.
pub(super) const GED_PCI_DEVICES_CHANGED: u32 = 1 << 2;
/// GED event flag (bit 3): power button; `devices::acpi_ged::GED_POWER_BUTTON`.
pub(super) const GED_POWER_BUTTON: u32 = 1 << 3;

/// Notify value for a slot: device check (something may have been plugged; rescan it).
const NOTIFY_DEVICE_CHECK: u8 = 1;
/// Notify value for a slot: eject request (the platform wants the device out).
const NOTIFY_EJECT_REQUEST: u8 = 3;
/// Notify value for the power button: "button pressed".
const NOTIFY_BUTTON_PRESSED: u8 = 0x80;

/// `_STA` of the controller devices: present, enabled, functioning, not shown in UI.
const STA_PRESENT_HIDDEN: u8 = 0x0b;
/// `Acquire` timeout meaning "wait forever".
const ACQUIRE_FOREVER: u16 = 0xffff;

/// Absolute path of the hotplug controller device.
const PHPR: &str = "\\_SB_.PHPR";
/// First and last slot that get a slot object (slot 0 is the host bridge).
const FIRST_SLOT: u8 = 1;
const LAST_SLOT: u8 = 31;

/// Name of the slot object of `slot` inside its root: `S001`…`S031` (cloud-hypervisor's).
pub fn slot_name(slot: u8) -> String {
    format!("S{slot:03}")
}

fn phpr(name: &str) -> Path {
    Path::new(&format!("{PHPR}.{name}"))
}

/// A `Field` of 32-bit registers `names`, one after the other, over `region`. DWord access
/// and write-as-zeros: every access is exactly one register, never a read-modify-write (a
/// read of PCIU, PCID or GDAT clears it).
fn dword_registers(region: &str, names: &[&[u8; 4]]) -> Field {
    Field::new(
        Path::new(region),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        names.iter().map(|n| FieldEntry::Named(**n, 32)).collect(),
    )
}

/// `\_SB_.GED_` and `\_SB_.GEC_`.
fn ged_aml(sink: &mut Vec<u8>) {
    let base = layout::ACPI_GED_MMIO_START;
    let size = layout::ACPI_GED_MMIO_SIZE;
    // Consumer, edge-triggered, active-high, exclusive.
    let irq = Interrupt::new(true, true, false, false, layout::ACPI_GED_GSI);
    let crs = ResourceTemplate::new(vec![&irq]);
    let region = OpRegion::new(Path::new("GDST"), OpRegionSpace::SystemMemory, &base, &size);
    let field = dword_registers("GDST", &[b"GDAT"]);

    // _EVT(Arg0 = the GSI): Local0 = GDAT (read and clear), then one action per set flag.
    let gdat = Path::new("GDAT");
    let read = Store::new(&Local(0), &gdat);
    let pci_flag = And::new(&ZERO, &Local(0), &GED_PCI_DEVICES_CHANGED);
    let scan = MethodCall::new(phpr("PSCN"), vec![]);
    let on_pci = If::new(&pci_flag, vec![&scan]);
    let button_flag = And::new(&ZERO, &Local(0), &GED_POWER_BUTTON);
    let pwrb = Path::new("\\_SB_.PWRB");
    let press = Notify::new(&pwrb, &NOTIFY_BUTTON_PRESSED);
    let on_button = If::new(&button_flag, vec![&press]);
    let evt = Method::new(
        Path::new("_EVT"),
        1,
        false,
        vec![&read, &on_pci, &on_button],
    );

    let hid = "ACPI0013";
    let uid = 0u8;
    Device::new(
        Path::new("\\_SB_.GED_"),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &uid),
            &Name::new(Path::new("_CRS"), &crs),
            &region,
            &field,
            &evt,
        ],
    )
    .to_aml_bytes(sink);

    let registers = Memory32Fixed::new(false, base as u32, size as u32);
    let gec_crs = ResourceTemplate::new(vec![&registers]);
    let gec_hid = EISAName::new("PNP0A06");
    let gec_uid = "Generic Event Controller";
    Device::new(
        Path::new("\\_SB_.GEC_"),
        vec![
            &Name::new(Path::new("_HID"), &gec_hid),
            &Name::new(Path::new("_UID"), &gec_uid),
            &Name::new(Path::new("_STA"), &STA_PRESENT_HIDDEN),
            &Name::new(Path::new("_CRS"), &gec_crs),
        ],
    )
    .to_aml_bytes(sink);
}

/// `\_SB_.PWRB`: the ACPI control-method power button.
fn power_button_aml(sink: &mut Vec<u8>) {
    let hid = EISAName::new("PNP0C0C");
    let uid = 0u8;
    Device::new(
        Path::new("\\_SB_.PWRB"),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &uid),
        ],
    )
    .to_aml_bytes(sink);
}

/// `\_SB_.PHPR`: the PCI hotplug controller; `PSCN` scans the segments of `roots`.
fn hotplug_controller_aml(roots: &[PciRootDescription], sink: &mut Vec<u8>) {
    let base = layout::PCI_HOTPLUG_MMIO_START;
    let size = layout::PCI_HOTPLUG_MMIO_SIZE;
    let registers = Memory32Fixed::new(true, base as u32, size as u32);
    let crs = ResourceTemplate::new(vec![&registers]);
    let region = OpRegion::new(Path::new("PCST"), OpRegionSpace::SystemMemory, &base, &size);
    let field = dword_registers("PCST", &[b"PCIU", b"PCID", b"B0EJ", b"PSEG"]);

    // PCEJ(Arg0 = slot, Arg1 = segment): select the segment, write the slot's bit to B0EJ.
    let lock = Acquire::new(Path::new("BLCK"), ACQUIRE_FOREVER);
    let pseg = Path::new("PSEG");
    let select = Store::new(&pseg, &Arg(1));
    let bit = ShiftLeft::new(&ZERO, &ONE, &Arg(0));
    let b0ej = Path::new("B0EJ");
    let eject = Store::new(&b0ej, &bit);
    let unlock = Release::new(Path::new("BLCK"));
    let pcej = Method::new(
        Path::new("PCEJ"),
        2,
        false,
        vec![&lock, &select, &eject, &unlock],
    );

    // PSCN: every root's PCNT, segment by segment.
    let calls: Vec<MethodCall> = roots
        .iter()
        .map(|r| MethodCall::new(Path::new(&format!("{}.PCNT", root_path(r.segment))), vec![]))
        .collect();
    let pscn = Method::new(
        Path::new("PSCN"),
        0,
        false,
        calls.iter().map(|c| c as &dyn Aml).collect(),
    );

    let hid = EISAName::new("PNP0A06");
    let uid = "PCI Hotplug Controller";
    Device::new(
        Path::new(PHPR),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &uid),
            &Name::new(Path::new("_STA"), &STA_PRESENT_HIDDEN),
            &Name::new(Path::new("_CRS"), &crs),
            &Mutex::new(Path::new("BLCK"), 0),
            &region,
            &field,
            &pcej,
            &pscn,
        ],
    )
    .to_aml_bytes(sink);
}

/// The platform devices of hotplug, in dependency order: the power button and the controller
/// first, so the GED's `_EVT` and every slot's `_EJ0` refer to objects already defined.
pub(super) fn platform_aml(roots: &[PciRootDescription], sink: &mut Vec<u8>) {
    power_button_aml(sink);
    hotplug_controller_aml(roots, sink);
    ged_aml(sink);
}

/// One slot object: `Device(Snnn) { _ADR, _SUN, _EJ0 }`.
struct Slot {
    slot: u8,
    segment: u16,
}

impl Aml for Slot {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let adr = u32::from(self.slot) << 16;
        let sun = u32::from(self.slot);
        // _EJ0(Arg0): \_SB_.PHPR.PCEJ(_SUN, segment).
        let sun_ref = Path::new("_SUN");
        let call = MethodCall::new(phpr("PCEJ"), vec![&sun_ref, &self.segment]);
        let ej0 = Method::new(Path::new("_EJ0"), 1, false, vec![&call]);
        Device::new(
            Path::new(&slot_name(self.slot)),
            vec![
                &Name::new(Path::new("_ADR"), &adr),
                &Name::new(Path::new("_SUN"), &sun),
                &ej0,
            ],
        )
        .to_aml_bytes(sink);
    }
}

/// `If (Arg0 & (1 << slot)) { Notify(Snnn, Arg1) }`.
struct SlotNotify {
    slot: u8,
}

impl Aml for SlotNotify {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let mask = 1u32 << self.slot;
        let set = And::new(&ZERO, &Arg(0), &mask);
        let object = Path::new(&slot_name(self.slot));
        let notify = Notify::new(&object, &Arg(1));
        If::new(&set, vec![&notify]).to_aml_bytes(sink);
    }
}

/// The hotplug objects that go inside the root device of `segment`: the slot devices, `DVNT`
/// and `PCNT`. Relative names: they must be serialised inside `\_SB_.PCxx`.
pub(super) fn slots_aml(segment: u16) -> Vec<u8> {
    let mut sink = Vec::new();
    let slots = FIRST_SLOT..=LAST_SLOT;
    for slot in slots.clone() {
        Slot { slot, segment }.to_aml_bytes(&mut sink);
    }

    // DVNT(Arg0 = bitmap, Arg1 = notify value).
    let notifies: Vec<SlotNotify> = slots.map(|slot| SlotNotify { slot }).collect();
    Method::new(
        Path::new("DVNT"),
        2,
        false,
        notifies.iter().map(|n| n as &dyn Aml).collect(),
    )
    .to_aml_bytes(&mut sink);

    // PCNT: under the controller's lock, select this segment, then device-check the slots
    // that came up and eject-request the ones going down (each read clears its bitmap).
    let lock = Acquire::new(phpr("BLCK"), ACQUIRE_FOREVER);
    let pseg = phpr("PSEG");
    let select = Store::new(&pseg, &segment);
    let pciu = phpr("PCIU");
    let up = MethodCall::new(Path::new("DVNT"), vec![&pciu, &NOTIFY_DEVICE_CHECK]);
    let pcid = phpr("PCID");
    let down = MethodCall::new(Path::new("DVNT"), vec![&pcid, &NOTIFY_EJECT_REQUEST]);
    let unlock = Release::new(phpr("BLCK"));
    Method::new(
        Path::new("PCNT"),
        0,
        false,
        vec![&lock, &select, &up, &down, &unlock],
    )
    .to_aml_bytes(&mut sink);
    sink
}
