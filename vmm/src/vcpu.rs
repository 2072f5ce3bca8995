//! One vCPU: its boot state, and the thread that runs it and turns its exits into device accesses
//! or a reason for the VM to stop.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use kvm_bindings::{CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use log::{debug, error, trace, warn};

use arch::boot::BootEntry;
use arch::cpuid::VcpuTopology;
use devices::bus::Bus;
use devices::exit::{ExitNotifier, ExitReason};

use crate::memory::GuestMemoryMmap;
use crate::Error;

/// `KVM_SYSTEM_EVENT_*` types (`kvm_run.system_event.type`).
const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

/// The buses a vCPU dispatches its I/O exits to.
pub struct VcpuBuses {
    /// Port I/O.
    pub pio: Arc<Bus>,
    /// MMIO outside guest RAM and outside the in-kernel APICs.
    pub mmio: Arc<Bus>,
}

/// How many exits of each kind reached the VMM, summed over all vCPUs. Passthrough BARs are
/// mapped into the guest, so device I/O should not show up here (only MSI-X table accesses).
#[derive(Default, Debug)]
pub struct ExitStats {
    /// MMIO exits (trapped BAR pages, ECAM, unclaimed MMIO).
    pub mmio: AtomicU64,
    /// Port I/O exits (serial, PCI config ports, ACPI, unclaimed ports).
    pub pio: AtomicU64,
}

impl std::fmt::Display for ExitStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mmio={} pio={}",
            self.mmio.load(Ordering::Relaxed),
            self.pio.load(Ordering::Relaxed)
        )
    }
}

/// A configured vCPU, ready to run on its own thread.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

impl Vcpu {
    /// Creates vCPU `index` and gives it CPUID, MSRs, FPU and LAPIC state; the boot vCPU
    /// (`entry` is `Some`) also gets the registers that enter the kernel.
    pub fn new(
        vm: &VmFd,
        index: u8,
        count: u8,
        base_cpuid: &CpuId,
        mem: &GuestMemoryMmap,
        entry: Option<&BootEntry>,
    ) -> Result<Self, Error> {
        let err = |op: &'static str| {
            move |e| Error::Vcpu {
                index,
                op,
                source: e,
            }
        };
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(err("KVM_CREATE_VCPU"))?;

        let mut cpuid = base_cpuid.clone();
        arch::cpuid::patch_cpuid(
            cpuid.as_mut_slice(),
            VcpuTopology {
                apic_id: index,
                count,
            },
        );
        fd.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;

        let entries = arch::regs::boot_msrs();
        let msrs = Msrs::from_entries(&entries).map_err(|_| Error::Vcpu {
            index,
            op: "building the MSR list",
            source: vmm_sys_util::errno::Error::new(libc::E2BIG),
        })?;
        let set = fd.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
        if set != entries.len() {
            warn!(
                "vCPU {index}: KVM refused boot MSR {:#x}; continuing without it",
                entries[set].index
            );
        }
        fd.set_fpu(&arch::regs::boot_fpu())
            .map_err(err("KVM_SET_FPU"))?;
        let mut lapic = fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
        arch::regs::set_lint(&mut lapic);
        fd.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))?;

        if let Some(entry) = entry {
            let mut sregs = fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
            arch::regs::setup_sregs(mem, entry.mode, &mut sregs)
                .map_err(|e| Error::BootState(e.to_string()))?;
            fd.set_sregs(&sregs).map_err(err("KVM_SET_SREGS"))?;
            fd.set_regs(&arch::regs::boot_regs(entry))
                .map_err(err("KVM_SET_REGS"))?;
        }
        Ok(Self { index, fd })
    }

    /// Runs the vCPU until the VM stops (`stop` set) or this vCPU ends the VM through `exit`.
    pub fn run(
        mut self,
        buses: VcpuBuses,
        exit: ExitNotifier,
        stop: Arc<AtomicBool>,
        stats: Arc<ExitStats>,
    ) {
        let index = self.index;
        while !stop.load(Ordering::Acquire) {
            let result = self.fd.run();
            match &result {
                Ok(VcpuExit::IoIn(..)) | Ok(VcpuExit::IoOut(..)) => {
                    stats.pio.fetch_add(1, Ordering::Relaxed);
                }
                Ok(VcpuExit::MmioRead(..)) | Ok(VcpuExit::MmioWrite(..)) => {
                    stats.mmio.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            let failure = match result {
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !buses.pio.read(u64::from(port), data) {
                        trace!("vCPU {index}: read of unclaimed port {port:#x}");
                        data.fill(0xff);
                    }
                    None
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    if !buses.pio.write(u64::from(port), data) {
                        trace!("vCPU {index}: write to unclaimed port {port:#x}");
                    }
                    None
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !buses.mmio.read(addr, data) {
                        debug!("vCPU {index}: read of unclaimed MMIO {addr:#x}");
                        data.fill(0xff);
                    }
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if !buses.mmio.write(addr, data) {
                        debug!("vCPU {index}: write to unclaimed MMIO {addr:#x}");
                    }
                    None
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => {
                        exit.notify(ExitReason::PowerOff);
                        return;
                    }
                    KVM_SYSTEM_EVENT_RESET => {
                        exit.notify(ExitReason::Reboot);
                        return;
                    }
                    KVM_SYSTEM_EVENT_CRASH => Some("the guest reported a crash (KVM_SYSTEM_EVENT_CRASH)".to_string()),
                    other => Some(format!("unexpected KVM system event {other}")),
                },
                Ok(VcpuExit::Shutdown) => {
                    Some("triple fault (KVM_EXIT_SHUTDOWN): the guest reset the CPU without asking the platform".to_string())
                }
                Ok(VcpuExit::InternalError) => Some(self.internal_error()),
                Ok(VcpuExit::FailEntry(reason, cpu)) => Some(format!(
                    "KVM could not enter the guest (hardware entry failure reason {reason:#x} on host CPU {cpu})"
                )),
                Ok(VcpuExit::Hlt) => Some("halted with no way to be woken (KVM_EXIT_HLT)".to_string()),
                Ok(other) => Some(format!("unhandled exit {other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
                Err(e) => Some(format!("KVM_RUN failed: {e}")),
            };
            if let Some(what) = failure {
                error!("vCPU {index}: {what}");
                self.log_state();
                exit.notify(ExitReason::Failure(format!("vCPU {index}: {what}")));
                return;
            }
        }
    }

    fn internal_error(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active member.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let data: Vec<String> = internal.data[..(internal.ndata as usize).min(internal.data.len())]
            .iter()
            .map(|d| format!("{d:#x}"))
            .collect();
        format!(
            "KVM internal error, suberror {} (1 = emulation failure), data [{}]",
            internal.suberror,
            data.join(", ")
        )
    }

    /// Logs the registers at error level so a failed boot can be diagnosed from the log.
    fn log_state(&self) {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => {
                error!(
                    "vCPU {} state: rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}",
                    self.index, r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp
                );
                error!(
                    "vCPU {} state: cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}(base {:#x}, l={}, db={}) idt={:#x}/{:#x}",
                    self.index, s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.cs.base, s.cs.l, s.cs.db, s.idt.base, s.idt.limit
                );
            }
            (r, s) => error!(
                "vCPU {}: cannot read its registers ({:?} / {:?})",
                self.index,
                r.err(),
                s.err()
            ),
        }
    }
}
