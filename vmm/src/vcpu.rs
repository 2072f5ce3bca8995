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

/// Why a vCPU ended the VM without the guest asking for it.
#[derive(Debug, thiserror::Error)]
pub enum VcpuFailure {
    /// The vCPU thread could not confine itself (`--seccomp`).
    #[error("vCPU {index}: {reason}")]
    Confine {
        /// The vCPU.
        index: u8,
        /// Why (the seccomp error chain).
        reason: String,
    },
    /// The guest reported a crash through KVM.
    #[error("vCPU {index}: the guest reported a crash (KVM_SYSTEM_EVENT_CRASH)")]
    Crash {
        /// The vCPU.
        index: u8,
    },
    /// A KVM system event viaduct does not know.
    #[error("vCPU {index}: unexpected KVM system event {event}")]
    SystemEvent {
        /// The vCPU.
        index: u8,
        /// `kvm_run.system_event.type`.
        event: u32,
    },
    /// A triple fault.
    #[error(
        "vCPU {index}: triple fault (KVM_EXIT_SHUTDOWN): the guest reset the CPU without asking \
         the platform"
    )]
    TripleFault {
        /// The vCPU.
        index: u8,
    },
    /// KVM could not emulate something.
    #[error(
        "vCPU {index}: KVM internal error, suberror {suberror} (1 = emulation failure), data {data:#x?}"
    )]
    Internal {
        /// The vCPU.
        index: u8,
        /// `kvm_run.internal.suberror`.
        suberror: u32,
        /// `kvm_run.internal.data`.
        data: Vec<u64>,
    },
    /// Hardware refused to enter the guest.
    #[error(
        "vCPU {index}: KVM could not enter the guest (hardware entry failure reason {reason:#x} \
         on host CPU {cpu})"
    )]
    FailEntry {
        /// The vCPU.
        index: u8,
        /// The hardware's reason.
        reason: u64,
        /// The host CPU.
        cpu: u32,
    },
    /// HLT with no in-kernel LAPIC to wake it.
    #[error("vCPU {index}: halted with no way to be woken (KVM_EXIT_HLT)")]
    Halted {
        /// The vCPU.
        index: u8,
    },
    /// An exit viaduct does not handle.
    #[error("vCPU {index}: unhandled exit {exit}")]
    UnhandledExit {
        /// The vCPU.
        index: u8,
        /// Which exit.
        exit: &'static str,
    },
    /// KVM_RUN itself failed.
    #[error("vCPU {index}: KVM_RUN failed")]
    KvmRun {
        /// The vCPU.
        index: u8,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The name of a `VcpuExit` variant, for a failure message.
fn exit_name(exit: &VcpuExit<'_>) -> &'static str {
    match exit {
        VcpuExit::Unknown => "KVM_EXIT_UNKNOWN",
        VcpuExit::Exception => "KVM_EXIT_EXCEPTION",
        VcpuExit::Hypercall(_) => "KVM_EXIT_HYPERCALL",
        VcpuExit::Debug(_) => "KVM_EXIT_DEBUG",
        VcpuExit::IrqWindowOpen => "KVM_EXIT_IRQ_WINDOW_OPEN",
        VcpuExit::Intr => "KVM_EXIT_INTR",
        VcpuExit::SetTpr => "KVM_EXIT_SET_TPR",
        VcpuExit::TprAccess => "KVM_EXIT_TPR_ACCESS",
        VcpuExit::Nmi => "KVM_EXIT_NMI",
        VcpuExit::X86Rdmsr(_) => "KVM_EXIT_X86_RDMSR",
        VcpuExit::X86Wrmsr(_) => "KVM_EXIT_X86_WRMSR",
        VcpuExit::IoapicEoi(_) => "KVM_EXIT_IOAPIC_EOI",
        VcpuExit::Hyperv => "KVM_EXIT_HYPERV",
        VcpuExit::Unsupported(_) => "an exit reason kvm-ioctls does not know",
        _ => "an exit viaduct never expects on x86",
    }
}

/// Which way a port access goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortDirection {
    In,
    Out,
}

/// Serves one `KVM_EXIT_IO`: `data` holds `data.len() / size` accesses of `size` bytes each
/// to the one port `port` (more than one for `rep ins/outs`), in order. An unclaimed port reads
/// all-ones and ignores writes, as on a PC.
fn port_accesses(
    bus: &Bus,
    port: u16,
    data: &mut [u8],
    size: usize,
    direction: PortDirection,
    index: u8,
) {
    for access in data.chunks_mut(size.max(1)) {
        let claimed = match direction {
            PortDirection::In => {
                let claimed = bus.read(u64::from(port), access);
                if !claimed {
                    access.fill(0xff);
                }
                claimed
            }
            PortDirection::Out => bus.write(u64::from(port), access),
        };
        if !claimed {
            trace!("vCPU {index}: {direction:?} on unclaimed port {port:#x}");
        }
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
            arch::regs::setup_sregs(mem, entry.mode, &mut sregs).map_err(Error::BootState)?;
            fd.set_sregs(&sregs).map_err(err("KVM_SET_SREGS"))?;
            fd.set_regs(&arch::regs::boot_regs(entry))
                .map_err(err("KVM_SET_REGS"))?;
        }
        Ok(Self { index, fd })
    }

    /// Runs the vCPU until the VM stops (`stop` set) or this vCPU ends the VM through `exit`.
    /// Returns what went wrong when this vCPU ended the VM because of a failure.
    pub fn run(
        mut self,
        buses: VcpuBuses,
        exit: ExitNotifier,
        stop: Arc<AtomicBool>,
        stats: Arc<ExitStats>,
        filters: crate::seccomp::Filters,
    ) -> Option<VcpuFailure> {
        let index = self.index;
        // Confined before the first KVM_RUN: the guest never reaches an unconfined vCPU.
        if let Err(e) = filters.apply(crate::seccomp::ThreadKind::Vcpu) {
            let failure = VcpuFailure::Confine {
                index,
                reason: crate::error_chain(&e),
            };
            error!("{failure}");
            exit.notify(ExitReason::Failure);
            return Some(failure);
        }
        while !stop.load(Ordering::Acquire) {
            let result = self.fd.run();
            let port_io = match &result {
                Ok(VcpuExit::IoIn(..)) => Some(PortDirection::In),
                Ok(VcpuExit::IoOut(..)) => Some(PortDirection::Out),
                _ => None,
            };
            if let Some(direction) = port_io {
                // kvm-ioctls hands string I/O (`rep ins/outs`) over as one `count × size` slice;
                // the kvm_run page says how it splits (the borrow of `result` ends here).
                stats.pio.fetch_add(1, Ordering::Relaxed);
                self.port_io(&buses.pio, direction);
                continue;
            }
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
                        return None;
                    }
                    KVM_SYSTEM_EVENT_RESET => {
                        exit.notify(ExitReason::Reboot);
                        return None;
                    }
                    KVM_SYSTEM_EVENT_CRASH => Some(VcpuFailure::Crash { index }),
                    event => Some(VcpuFailure::SystemEvent { index, event }),
                },
                Ok(VcpuExit::Shutdown) => Some(VcpuFailure::TripleFault { index }),
                Ok(VcpuExit::InternalError) => Some(self.internal_error()),
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    Some(VcpuFailure::FailEntry { index, reason, cpu })
                }
                Ok(VcpuExit::Hlt) => Some(VcpuFailure::Halted { index }),
                Ok(other) => Some(VcpuFailure::UnhandledExit {
                    index,
                    exit: exit_name(&other),
                }),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
                Err(source) => Some(VcpuFailure::KvmRun { index, source }),
            };
            if let Some(failure) = failure {
                error!("{failure}");
                self.log_state();
                exit.notify(ExitReason::Failure);
                return Some(failure);
            }
        }
        None
    }

    /// Serves the `KVM_EXIT_IO` the last run stopped on.
    fn port_io(&mut self, bus: &Bus, direction: PortDirection) {
        let index = self.index;
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_IO (the caller saw IoIn/IoOut), so `io` is the
        // active member.
        let io = unsafe { run.__bindgen_anon_1.io };
        let len = usize::from(io.size) * io.count as usize;
        let base = (run as *mut kvm_bindings::kvm_run).cast::<u8>();
        // SAFETY: the kernel put `count × size` bytes at `data_offset` inside the vCPU's
        // kvm_run mapping (the same slice kvm-ioctls builds for the exit), and nothing else
        // refers to that mapping while this vCPU thread handles its own exit.
        let data =
            unsafe { std::slice::from_raw_parts_mut(base.add(io.data_offset as usize), len) };
        port_accesses(bus, io.port, data, usize::from(io.size), direction, index);
    }

    fn internal_error(&mut self) -> VcpuFailure {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active member.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        VcpuFailure::Internal {
            index: self.index,
            suberror: internal.suberror,
            data: internal.data[..n].to_vec(),
        }
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
                if is_reset_state(r.rip, s.cs.base) {
                    error!(
                        "vCPU {}: those are a CPU's reset values, not where the guest stopped: \
                         on AMD hosts KVM resets the vCPU before it reports a shutdown (the \
                         host's kvm:kvm_exit trace event has the guest's RIP)",
                        self.index
                    );
                }
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

/// Whether a vCPU's registers are those of a CPU just reset (the reset vector, 0xffff_fff0), as
/// KVM leaves them on AMD after a triple fault.
fn is_reset_state(rip: u64, cs_base: u64) -> bool {
    rip == 0xfff0 && cs_base == 0xffff_0000
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use devices::bus::BusDevice;

    use super::*;

    /// Records every access; reads return successive bytes 1, 2, 3, ...
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        reads: Vec<usize>,
        next: u8,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            self.reads.push(data.len());
            for b in data {
                self.next += 1;
                *b = self.next;
            }
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.writes.push(data.to_vec());
        }
    }

    fn bus_with(port: u64) -> (Bus, Arc<Mutex<Recorder>>) {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), port, 8).unwrap();
        (bus, dev)
    }

    #[test]
    fn only_the_reset_vector_counts_as_reset_state() {
        assert!(is_reset_state(0xfff0, 0xffff_0000));
        // A guest that stopped in its kernel, or in real mode elsewhere.
        assert!(!is_reset_state(0xffff_ffff_8106_0489, 0));
        assert!(!is_reset_state(0xfff0, 0));
    }

    #[test]
    fn rep_outsb_is_count_one_byte_writes_to_one_port() {
        let (bus, dev) = bus_with(0x3f8);
        let mut data = *b"abcd";
        port_accesses(&bus, 0x3f8, &mut data, 1, PortDirection::Out, 0);
        let writes = &dev.lock().unwrap().writes;
        assert_eq!(
            writes,
            &[b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
        );
    }

    #[test]
    fn rep_insw_is_count_two_byte_reads() {
        let (bus, dev) = bus_with(0x1f0);
        let mut data = [0u8; 6];
        port_accesses(&bus, 0x1f0, &mut data, 2, PortDirection::In, 0);
        assert_eq!(dev.lock().unwrap().reads, [2, 2, 2]);
        assert_eq!(data, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn unclaimed_port_reads_all_ones() {
        let bus = Bus::new();
        let mut data = [0u8; 4];
        port_accesses(&bus, 0x80, &mut data, 4, PortDirection::In, 0);
        assert_eq!(data, [0xff; 4]);
    }
}
