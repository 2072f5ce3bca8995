//! KVM GSI routing for the whole VM: the in-kernel irqchip's default routes (GSI 0–15 to the PIC
//! and IOAPIC, 16–23 to the IOAPIC) plus one MSI route per passthrough vector. KVM replaces the
//! whole table on every `KVM_SET_GSI_ROUTING`, so the table lives here and is committed whole.
//! [`GsiRouter`] is what passthrough devices use (the `vfio_dev::routing::InterruptRouter`
//! trait): routes, irqfds and level-triggered irqfds with resample.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vfio_dev::routing::{Gsi, InterruptRouter, RoutingError};
use vmm_sys_util::eventfd::EventFd;

/// IOAPIC pins of the in-kernel irqchip; GSIs below this are its pins.
pub const IOAPIC_PINS: u32 = 24;
/// First GSI handed out for MSI routes.
pub const FIRST_MSI_GSI: u32 = IOAPIC_PINS;
/// Most routes one `KVM_SET_GSI_ROUTING` may carry on x86 (KVM_MAX_IRQ_ROUTES); every GSI
/// must also be below it.
pub const MAX_ROUTES: u32 = 4096;
/// Routes of the irqchip defaults: GSI 0–15 to the PIC and the IOAPIC, 16–23 to the IOAPIC.
pub const IRQCHIP_ROUTES: u32 = 16 * 2 + (IOAPIC_PINS - 16);
/// One past the last MSI GSI: as many MSI routes as fit in the table beside the irqchip's
/// (4056), so a table with every GSI routed is still one KVM accepts.
pub const GSI_LIMIT: u32 = FIRST_MSI_GSI + (MAX_ROUTES - IRQCHIP_ROUTES);

/// The routing table as data: pure, so its contents are unit-tested.
#[derive(Default)]
pub struct RoutingTable {
    msi: BTreeMap<u32, (u64, u32)>,
    /// GSIs given back below `next`, reused lowest first.
    freed: BTreeSet<u32>,
    /// GSIs `FIRST_MSI_GSI..next` have been handed out (some since freed); 0 = none yet.
    next: u32,
}

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

impl RoutingTable {
    /// Lowest free MSI GSI, or `None` when all are taken.
    pub fn allocate(&mut self) -> Option<u32> {
        if let Some(gsi) = self.freed.pop_first() {
            return Some(gsi);
        }
        let gsi = self.next.max(FIRST_MSI_GSI);
        if gsi >= GSI_LIMIT {
            return None;
        }
        self.next = gsi + 1;
        Some(gsi)
    }

    /// Returns `gsi` to the pool and drops its route; whether the routes changed.
    pub fn free(&mut self, gsi: u32) -> bool {
        if (FIRST_MSI_GSI..self.next).contains(&gsi) {
            self.freed.insert(gsi);
        }
        self.msi.remove(&gsi).is_some()
    }

    /// Sets `gsi`'s MSI message; whether the routes changed (a guest rewriting an MSI-X entry
    /// with the message it already has changes nothing KVM needs to hear about).
    pub fn set_msi(&mut self, gsi: u32, address: u64, data: u32) -> bool {
        self.msi.insert(gsi, (address, data)) != Some((address, data))
    }

    /// Drops `gsi`'s MSI route (the GSI stays allocated); whether the routes changed.
    pub fn remove(&mut self, gsi: u32) -> bool {
        self.msi.remove(&gsi).is_some()
    }

    /// Every route KVM must have: the irqchip defaults, then the MSI routes.
    pub fn entries(&self) -> Vec<kvm_irq_routing_entry> {
        let mut entries = Vec::with_capacity(IRQCHIP_ROUTES as usize + self.msi.len());
        for gsi in 0..IOAPIC_PINS {
            if gsi < 16 {
                let chip = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                entries.push(irqchip_entry(gsi, chip, gsi % 8));
            }
            entries.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        }
        for (&gsi, &(address, data)) in &self.msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = address as u32;
            e.u.msi.address_hi = (address >> 32) as u32;
            e.u.msi.data = data;
            entries.push(e);
        }
        entries
    }
}

/// KVM-backed [`InterruptRouter`].
pub struct GsiRouter {
    vm: Arc<VmFd>,
    table: Mutex<RoutingTable>,
}

fn routing_error(what: impl Into<String>, e: impl std::fmt::Display) -> RoutingError {
    RoutingError {
        what: what.into(),
        detail: e.to_string(),
    }
}

impl GsiRouter {
    /// A router over `vm`'s routing table.
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            table: Mutex::new(RoutingTable::default()),
        }
    }

    fn commit(&self, table: &RoutingTable) -> Result<(), RoutingError> {
        let entries = table.entries();
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| routing_error("building the GSI routing table", format!("{e:?}")))?;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(|e| routing_error("KVM_SET_GSI_ROUTING", e))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, RoutingTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl InterruptRouter for GsiRouter {
    fn allocate_gsi(&self) -> Result<Gsi, RoutingError> {
        self.table().allocate().map(Gsi).ok_or_else(|| {
            routing_error(
                "allocating a GSI",
                format!("all {GSI_LIMIT} GSIs are in use"),
            )
        })
    }

    fn free_gsi(&self, gsi: Gsi) {
        let mut table = self.table();
        if table.free(gsi.0) {
            if let Err(e) = self.commit(&table) {
                log::warn!("freeing GSI {}: {e}", gsi.0);
            }
        }
    }

    fn set_msi_route(&self, gsi: Gsi, address: u64, data: u32) -> Result<(), RoutingError> {
        let mut table = self.table();
        if !table.set_msi(gsi.0, address, data) {
            return Ok(());
        }
        self.commit(&table)
    }

    fn remove_route(&self, gsi: Gsi) -> Result<(), RoutingError> {
        let mut table = self.table();
        if !table.remove(gsi.0) {
            return Ok(());
        }
        self.commit(&table)
    }

    fn attach_irqfd(&self, event: &EventFd, gsi: Gsi) -> Result<(), RoutingError> {
        self.vm
            .register_irqfd(event, gsi.0)
            .map_err(|e| routing_error(format!("KVM_IRQFD assign (GSI {})", gsi.0), e))
    }

    fn detach_irqfd(&self, event: &EventFd, gsi: Gsi) -> Result<(), RoutingError> {
        self.vm
            .unregister_irqfd(event, gsi.0)
            .map_err(|e| routing_error(format!("KVM_IRQFD deassign (GSI {})", gsi.0), e))
    }

    fn attach_level_irqfd(
        &self,
        event: &EventFd,
        resample: &EventFd,
        gsi: Gsi,
    ) -> Result<(), RoutingError> {
        self.vm
            .register_irqfd_with_resample(event, resample, gsi.0)
            .map_err(|e| routing_error(format!("KVM_IRQFD resample assign (GSI {})", gsi.0), e))
    }

    fn detach_level_irqfd(&self, event: &EventFd, gsi: Gsi) -> Result<(), RoutingError> {
        self.detach_irqfd(event, gsi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_cover_pic_and_ioapic() {
        let t = RoutingTable::default();
        let e = t.entries();
        assert_eq!(e.len(), 16 * 2 + 8);
        let chips: Vec<(u32, u32, u32)> = e
            .iter()
            // SAFETY: irqchip entries carry the irqchip union member.
            .map(|r| unsafe { (r.gsi, r.u.irqchip.irqchip, r.u.irqchip.pin) })
            .collect();
        assert!(chips.contains(&(9, KVM_IRQCHIP_PIC_SLAVE, 1)));
        assert!(chips.contains(&(9, KVM_IRQCHIP_IOAPIC, 9)));
        assert!(chips.contains(&(23, KVM_IRQCHIP_IOAPIC, 23)));
        assert!(!chips.contains(&(20, KVM_IRQCHIP_PIC_MASTER, 4)));
    }

    #[test]
    fn msi_routes_follow_the_defaults_and_free_gsis_are_reused() {
        let mut t = RoutingTable::default();
        let a = t.allocate().unwrap();
        let b = t.allocate().unwrap();
        assert_eq!((a, b), (24, 25));
        t.set_msi(b, 0x1_fee0_1000, 0x4041);
        let e = t.entries();
        let last = e.last().unwrap();
        assert_eq!((last.gsi, last.type_), (25, KVM_IRQ_ROUTING_MSI));
        // SAFETY: MSI entries carry the msi union member.
        let msi = unsafe { last.u.msi };
        assert_eq!(
            (msi.address_lo, msi.address_hi, msi.data),
            (0xfee0_1000, 1, 0x4041)
        );
        t.free(a);
        assert_eq!(t.allocate(), Some(24));
        t.remove(b);
        assert_eq!(t.entries().len(), 40);
    }

    #[test]
    fn gsi_space_is_bounded() {
        let mut t = RoutingTable::default();
        for _ in FIRST_MSI_GSI..GSI_LIMIT {
            assert!(t.allocate().is_some());
        }
        assert_eq!(t.allocate(), None);
    }

    #[test]
    fn a_table_with_every_gsi_routed_fits_kvms_limit() {
        let mut t = RoutingTable::default();
        while let Some(gsi) = t.allocate() {
            t.set_msi(gsi, 0xfee0_0000, gsi);
        }
        let entries = t.entries();
        assert!(entries.len() <= MAX_ROUTES as usize, "{}", entries.len());
        assert!(entries.iter().all(|e| e.gsi < MAX_ROUTES));
        assert_eq!(entries.len(), MAX_ROUTES as usize);
    }

    #[test]
    fn only_real_changes_need_a_commit() {
        let mut t = RoutingTable::default();
        let gsi = t.allocate().unwrap();
        assert!(t.set_msi(gsi, 0xfee0_0000, 0x41));
        assert!(!t.set_msi(gsi, 0xfee0_0000, 0x41), "same message again");
        assert!(t.set_msi(gsi, 0xfee0_1000, 0x41));
        assert!(t.remove(gsi));
        assert!(!t.remove(gsi), "no route left to remove");
        assert!(!t.free(gsi), "freeing an unrouted GSI");
    }
}
