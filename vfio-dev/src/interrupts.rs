//! Delivering a passthrough device's interrupts: VFIO signals one eventfd per vector, KVM
//! injects it through an irqfd bound to a GSI whose route carries the guest's MSI message.
//!
//! The guest-visible MSI/MSI-X state lives in the `pci` models ([`Msix`], [`Msi`]); this module
//! turns their [`MsixChange`]/[`MsiChange`] reports into VFIO `SET_IRQS` calls and router
//! operations:
//! - an irqfd is attached only while its vector is deliverable (enabled, function and vector
//!   unmasked), so a masked vector is really not delivered (cloud-hypervisor keeps it attached);
//! - while detached, the eventfd keeps counting what the device raised: that count *is* the
//!   pending bit the guest reads in the PBA (checked with `poll`, never consumed);
//! - on unmask the count is consumed, the irqfd attached, and the eventfd signalled once more,
//!   so KVM delivers the pending interrupt exactly once ("deliver on unmask"). Each vector is a
//!   [`MsiVector`], which keeps that invariant (its module documents the details).
//! - INTx uses a level-triggered irqfd with a resample eventfd that VFIO watches to unmask the
//!   line when the guest EOIs it, so no EOI goes through the VMM; it is off while MSI or MSI-X
//!   is on.
//!
//! Failures while the guest programs interrupts are logged with the device and vector and
//! leave that vector undelivered; they never panic.

use std::sync::Arc;

use pci::msi::{Msi, MsiChange, MsiMessage};
use pci::msi_vector::MsiVector;
use pci::msix::{Msix, MsixChange};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::access::{irq, VfioDeviceAccess};
use crate::routing::{Gsi, InterruptRouter};

/// MSI-X: the model, where its capability is, and one vector per table entry.
pub(crate) struct MsixIrq {
    pub(crate) model: Msix,
    vectors: Vec<MsiVector>,
    host_enabled: bool,
}

/// MSI: the model, where its capability is, one vector per capable message.
pub(crate) struct MsiIrq {
    pub(crate) model: Msi,
    vectors: Vec<MsiVector>,
    host_count: usize,
}

struct Intx {
    event: EventFd,
    resample: EventFd,
    gsi: Gsi,
    on: bool,
}

/// Every interrupt mechanism of one passthrough device.
pub(crate) struct Interrupts {
    name: String,
    access: Arc<dyn VfioDeviceAccess>,
    router: Arc<dyn InterruptRouter>,
    pub(crate) msix: Option<MsixIrq>,
    pub(crate) msi: Option<MsiIrq>,
    intx: Option<Intx>,
}

impl Interrupts {
    /// Creates the eventfds (VFIO needs them at enable time) and turns INTx on when the device
    /// has it and the VMM gave it a GSI. Errors are sentences for `DeviceError::Interrupts`.
    pub(crate) fn new(
        name: &str,
        access: Arc<dyn VfioDeviceAccess>,
        router: Arc<dyn InterruptRouter>,
        msix: Option<Msix>,
        msi: Option<Msi>,
        intx_gsi: Option<Gsi>,
    ) -> Result<Self, String> {
        let vectors = |n: usize| -> Result<Vec<MsiVector>, String> {
            (0..n)
                .map(|_| MsiVector::new())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("cannot create interrupt eventfds: {e}"))
        };
        let msix = match msix {
            Some(model) => Some(MsixIrq {
                vectors: vectors(usize::from(model.layout().table_size))?,
                model,
                host_enabled: false,
            }),
            None => None,
        };
        let msi = match msi {
            Some(model) => Some(MsiIrq {
                vectors: vectors(1 << model.features().multiple_message_capable)?,
                model,
                host_count: 0,
            }),
            None => None,
        };
        let intx = match intx_gsi.filter(|_| access.irq_count(irq::INTX) > 0) {
            Some(gsi) => {
                let fd = || EventFd::new(EFD_NONBLOCK).map_err(|e| format!("INTx eventfd: {e}"));
                Some(Intx {
                    event: fd()?,
                    resample: fd()?,
                    gsi,
                    on: false,
                })
            }
            None => None,
        };
        let mut irqs = Self {
            name: name.to_string(),
            access,
            router,
            msix,
            msi,
            intx,
        };
        irqs.intx_on()?;
        Ok(irqs)
    }

    /// The GSI INTx asserts, when INTx is set up.
    pub(crate) fn intx_gsi(&self) -> Option<Gsi> {
        self.intx.as_ref().map(|i| i.gsi)
    }

    /// Guest write to the MSI-X capability at `rel` from its start.
    pub(crate) fn msix_write_capability(&mut self, rel: usize, data: &[u8]) {
        if let Some(m) = self.msix.as_mut() {
            let changes = m.model.write_capability(rel, data);
            self.apply_msix(&changes);
        }
    }

    /// Guest write to the emulated MSI-X table (never reaches the device).
    pub(crate) fn msix_write_table(&mut self, offset: u64, data: &[u8]) {
        if let Some(m) = self.msix.as_mut() {
            let changes = m.model.write_table(offset, data);
            self.apply_msix(&changes);
        }
    }

    /// Guest read of the PBA: a vector's bit is set when it fired while not deliverable.
    pub(crate) fn msix_read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(m) = self.msix.as_ref() else { return };
        let len = data.len() as u64;
        if !matches!(len, 4 | 8) || !offset.is_multiple_of(len) {
            return;
        }
        let first = offset * 8;
        for (bit, vector) in (first..first + len * 8).enumerate() {
            let pending = usize::try_from(vector)
                .ok()
                .and_then(|v| m.vectors.get(v))
                .is_some_and(|v| m.host_enabled && v.is_pending());
            if pending {
                data[bit / 8] |= 1 << (bit % 8);
            }
        }
    }

    /// Guest read of the MSI capability at `rel`; the Pending Bits register (when the
    /// capability has per-vector masks) shows which masked vectors fired.
    pub(crate) fn msi_read(&self, rel: usize, data: &mut [u8]) {
        let Some(m) = self.msi.as_ref() else { return };
        m.model.read(rel, data);
        let f = m.model.features();
        if !f.per_vector_mask {
            return;
        }
        let pending_reg = if f.addr64 { 20 } else { 16 };
        let mut bits = 0u32;
        for (v, vector) in m.vectors.iter().enumerate().take(m.host_count) {
            if vector.is_pending() {
                bits |= 1 << v;
            }
        }
        let bytes = bits.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            if let Some(k) = (rel + i).checked_sub(pending_reg).filter(|&k| k < 4) {
                *b = bytes[k];
            }
        }
    }

    /// Guest write to the MSI capability at `rel` from its start.
    pub(crate) fn msi_write(&mut self, rel: usize, data: &[u8]) {
        if let Some(m) = self.msi.as_mut() {
            let changes = m.model.write(rel, data);
            self.apply_msi(&changes);
        }
    }

    /// Turns every mechanism off on the device and releases every GSI. Idempotent.
    pub(crate) fn shutdown(&mut self) {
        if let Some(m) = self.msix.as_mut() {
            if m.host_enabled {
                warn_err(&self.name, "MSI-X", self.access.disable_irq(irq::MSIX));
                m.host_enabled = false;
            }
            for (v, vector) in m.vectors.iter_mut().enumerate() {
                release(&self.name, &*self.router, "MSI-X", v, vector);
            }
        }
        if let Some(m) = self.msi.as_mut() {
            if m.host_count > 0 {
                warn_err(&self.name, "MSI", self.access.disable_irq(irq::MSI));
                m.host_count = 0;
            }
            for (v, vector) in m.vectors.iter_mut().enumerate() {
                release(&self.name, &*self.router, "MSI", v, vector);
            }
        }
        self.intx_off();
    }

    fn apply_msix(&mut self, changes: &[MsixChange]) {
        for change in changes {
            match *change {
                MsixChange::Enabled => {
                    self.intx_off();
                    let Some(m) = self.msix.as_mut() else { return };
                    let fds: Vec<&EventFd> = m.vectors.iter().map(MsiVector::event).collect();
                    match self.access.enable_irq(irq::MSIX, &fds) {
                        Ok(()) => m.host_enabled = true,
                        Err(e) => log::warn!(
                            "{}: MSI-X stays undelivered, the host refused to enable it: {e}",
                            self.name
                        ),
                    }
                    self.sync_all_msix();
                }
                MsixChange::Disabled => {
                    let Some(m) = self.msix.as_mut() else { return };
                    if m.host_enabled {
                        warn_err(&self.name, "MSI-X", self.access.disable_irq(irq::MSIX));
                        m.host_enabled = false;
                    }
                    for (v, vector) in m.vectors.iter_mut().enumerate() {
                        release(&self.name, &*self.router, "MSI-X", v, vector);
                        vector.drain();
                    }
                    if self.msi.as_ref().is_none_or(|m| m.host_count == 0) {
                        self.intx_on_or_warn();
                    }
                }
                MsixChange::FunctionMasked | MsixChange::FunctionUnmasked => self.sync_all_msix(),
                MsixChange::VectorUpdated(v)
                | MsixChange::VectorMasked(v)
                | MsixChange::VectorUnmasked(v) => self.sync_msix(usize::from(v)),
                // The model's own pending bits are never set (the eventfds hold them), so it
                // has nothing to deliver; re-attaching in `sync_msix` delivers instead.
                MsixChange::Deliver { .. } => {}
            }
        }
    }

    fn sync_all_msix(&mut self) {
        let n = self.msix.as_ref().map_or(0, |m| m.vectors.len());
        for v in 0..n {
            self.sync_msix(v);
        }
    }

    fn sync_msix(&mut self, v: usize) {
        let Some(m) = self.msix.as_mut() else { return };
        let Some(vector) = m.vectors.get_mut(v) else {
            return;
        };
        let want = u16::try_from(v)
            .ok()
            .filter(|&v| m.host_enabled && m.model.is_deliverable(v))
            .and_then(|v| m.model.message(v));
        sync(&self.name, &*self.router, "MSI-X", v, vector, want);
    }

    fn apply_msi(&mut self, changes: &[MsiChange]) {
        for change in changes {
            match *change {
                MsiChange::Enabled | MsiChange::Reprogrammed => {
                    self.intx_off();
                    let Some(m) = self.msi.as_mut() else { return };
                    let n = usize::from(m.model.vectors_enabled()).min(m.vectors.len());
                    if m.host_count != n {
                        // VFIO cannot resize an enabled MSI block: turn it off and on again.
                        if m.host_count > 0 {
                            warn_err(&self.name, "MSI", self.access.disable_irq(irq::MSI));
                            m.host_count = 0;
                        }
                        let fds: Vec<&EventFd> =
                            m.vectors[..n].iter().map(MsiVector::event).collect();
                        match self.access.enable_irq(irq::MSI, &fds) {
                            Ok(()) => m.host_count = n,
                            Err(e) => log::warn!(
                                "{}: MSI stays undelivered, the host refused to enable \
                                 {n} vectors: {e}",
                                self.name
                            ),
                        }
                    }
                    self.sync_all_msi();
                }
                MsiChange::Disabled => {
                    let Some(m) = self.msi.as_mut() else { return };
                    if m.host_count > 0 {
                        warn_err(&self.name, "MSI", self.access.disable_irq(irq::MSI));
                        m.host_count = 0;
                    }
                    for (v, vector) in m.vectors.iter_mut().enumerate() {
                        release(&self.name, &*self.router, "MSI", v, vector);
                        vector.drain();
                    }
                    if self.msix.as_ref().is_none_or(|m| !m.host_enabled) {
                        self.intx_on_or_warn();
                    }
                }
                MsiChange::Masked(v) | MsiChange::Unmasked(v) => self.sync_msi(usize::from(v)),
                MsiChange::Deliver { .. } => {}
            }
        }
    }

    fn sync_all_msi(&mut self) {
        let n = self.msi.as_ref().map_or(0, |m| m.vectors.len());
        for v in 0..n {
            self.sync_msi(v);
        }
    }

    fn sync_msi(&mut self, v: usize) {
        let Some(m) = self.msi.as_mut() else { return };
        let Some(vector) = m.vectors.get_mut(v) else {
            return;
        };
        let want = u16::try_from(v)
            .ok()
            .filter(|&v| usize::from(v) < m.host_count && m.model.enabled())
            .filter(|&v| !m.model.is_masked(v))
            .and_then(|v| m.model.message(v));
        sync(&self.name, &*self.router, "MSI", v, vector, want);
    }

    /// Attaches the level-triggered irqfd and hands VFIO the trigger and unmask eventfds.
    fn intx_on(&mut self) -> Result<(), String> {
        let Some(intx) = self.intx.as_mut().filter(|i| !i.on) else {
            return Ok(());
        };
        let gsi = intx.gsi;
        self.router
            .attach_level_irqfd(&intx.event, &intx.resample, gsi)
            .map_err(|e| format!("INTx on GSI {}: {e}", gsi.0))?;
        let host = self
            .access
            .enable_irq(irq::INTX, &[&intx.event])
            .and_then(|()| self.access.set_intx_unmask_fd(&intx.resample));
        if let Err(e) = host {
            let _ = self.access.disable_irq(irq::INTX);
            let _ = self.router.detach_level_irqfd(&intx.event, gsi);
            return Err(format!("INTx on GSI {}: {e}", gsi.0));
        }
        intx.on = true;
        Ok(())
    }

    fn intx_on_or_warn(&mut self) {
        if let Err(e) = self.intx_on() {
            log::warn!("{}: INTx stays off: {e}", self.name);
        }
    }

    fn intx_off(&mut self) {
        let Some(intx) = self.intx.as_mut().filter(|i| i.on) else {
            return;
        };
        warn_err(&self.name, "INTx", self.access.disable_irq(irq::INTX));
        if let Err(e) = self.router.detach_level_irqfd(&intx.event, intx.gsi) {
            log::warn!("{}: INTx: {e}", self.name);
        }
        drain(&intx.event);
        intx.on = false;
    }
}

/// Brings `vector` to the wanted state: attached with route `want`, or detached (route and GSI
/// kept for a cheap re-attach). Failures are logged and leave the vector undelivered.
fn sync(
    name: &str,
    router: &dyn InterruptRouter,
    kind: &str,
    v: usize,
    vector: &mut MsiVector,
    want: Option<MsiMessage>,
) {
    if let Err(e) = vector.sync(router, want) {
        log::warn!("{name}: {kind} vector {v} is not delivered: {e}");
    }
}

/// Detaches `vector`, removes its route and frees its GSI.
fn release(name: &str, router: &dyn InterruptRouter, kind: &str, v: usize, vector: &mut MsiVector) {
    for e in vector.release(router) {
        log::warn!("{name}: {kind} vector {v} teardown: {e}");
    }
}

/// Clears a stale count so it is not delivered on the next enable.
fn drain(event: &EventFd) {
    let _ = event.read();
}

fn warn_err(name: &str, what: &str, r: Result<(), crate::access::IrqError>) {
    if let Err(e) = r {
        log::warn!("{name}: turning {what} off on the host failed: {e}");
    }
}

#[cfg(test)]
#[path = "interrupts_tests.rs"]
mod tests;
