//! The viaduct VMM: creates the KVM VM and its vCPUs, guest memory, wires the devices and runs
//! the event loop until the guest powers off, reboots or fails.
//!
//! `run` reads top to bottom like the boot sequence. Address layout and boot-protocol details
//! belong to `arch`, device behaviour to `devices`; this crate only puts them together.

pub mod config;
mod console;
mod disks;
mod interrupts;
mod legacy;
mod memory;
mod passthrough;
mod pci;
mod pci_device;
mod signals;
mod vcpu;
mod vm;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use log::{info, warn};

use config::VmConfig;
use devices::bus::Bus;
use devices::exit::{ExitNotifier, ExitReason};

/// How a VM run ended when the guest itself asked for it to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off.
    PowerOff,
    /// The guest asked to reboot; viaduct does not restart guests in place.
    Reboot,
}

/// Why a VM could not be run to a clean end.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {}", kvm_open_hint(*.0))]
    KvmOpen(i32),
    /// KVM lacks something viaduct needs.
    #[error("KVM on this host lacks the {0} capability; viaduct needs it")]
    KvmCapability(&'static str),
    /// A VM-level KVM ioctl failed.
    #[error("{0} failed: {1}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// A vCPU ioctl failed.
    #[error("vCPU {index}: {op} failed: {source}")]
    Vcpu {
        /// The vCPU.
        index: u8,
        /// The operation.
        op: &'static str,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
    /// Guest RAM could not be mapped.
    #[error("cannot map {bytes} bytes of guest memory: {detail}; try a smaller --memory size")]
    GuestMemory {
        /// Requested size.
        bytes: u64,
        /// Underlying error.
        detail: String,
    },
    /// Loading the kernel or writing boot information failed.
    #[error(transparent)]
    Boot(#[from] arch::boot::BootError),
    /// Building the ACPI tables failed.
    #[error(transparent)]
    Acpi(#[from] arch::acpi::AcpiError),
    /// The boot vCPU state could not be written.
    #[error("{0}")]
    BootState(String),
    /// `--serial file=` could not be opened.
    #[error("--serial file={}: cannot open for appending: {source}", path.display())]
    SerialFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// Devices could not be placed.
    #[error("device layout: {0}")]
    DeviceLayout(String),
    /// A disk could not be set up; the message names the disk.
    #[error("{0}")]
    Disk(String),
    /// A passthrough device could not be set up; the message names the device.
    #[error("{0}")]
    Passthrough(String),
    /// The PCI segments could not be laid out.
    #[error("PCI layout: {0}")]
    PciLayout(String),
    /// The event loop failed.
    #[error("event loop: {0}")]
    EventLoop(String),
    /// A vCPU thread could not be started.
    #[error("cannot start the thread for vCPU {0}: {1}")]
    VcpuThread(u8, #[source] std::io::Error),
    /// The guest kernel panicked (reported through pvpanic).
    #[error("the guest kernel panicked")]
    GuestPanic,
    /// A vCPU stopped in a way the guest did not ask for.
    #[error("the VM failed: {0}")]
    VmFailure(String),
    /// viaduct was asked to stop by a signal.
    #[error("stopped by signal {0}")]
    Signal(&'static str),
}

fn kvm_open_hint(errno: i32) -> String {
    match errno {
        libc::ENOENT => {
            "it does not exist; load kvm_intel or kvm_amd and enable virtualization in firmware"
                .into()
        }
        libc::EACCES | libc::EPERM => {
            "permission denied; add your user to the group that owns /dev/kvm (usually kvm)".into()
        }
        e => std::io::Error::from_raw_os_error(e).to_string(),
    }
}

/// How long a vCPU thread gets to leave KVM_RUN after being kicked at shutdown.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Boots the VM described by `config` and runs it until it stops.
pub fn run(config: VmConfig) -> Result<Outcome, Error> {
    let kvm = vm::open_kvm()?;
    let vm = Arc::new(vm::create_vm(&kvm)?);
    let mem = memory::create_guest_memory(config.memory_bytes)?;
    memory::register_memory(&vm, &mem)?;

    let kernel = arch::boot::load_kernel(&mem, &config.kernel)?;
    info!("kernel {}: {}", config.kernel.display(), kernel.image);
    let initramfs = match &config.initramfs {
        Some(path) => Some(arch::boot::load_initramfs(
            &mem,
            path,
            &kernel,
            config.memory_bytes,
        )?),
        None => None,
    };

    let exit = ExitNotifier::new().map_err(Error::EventFd)?;
    let legacy = legacy::create_legacy_devices(&vm, &config.serial, &exit)?;
    let pio = Arc::new(legacy.pio);
    let mmio = Arc::new(Bus::new());

    let mut base_cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| Error::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
    let host_phys_bits = arch::cpuid::reported_phys_bits(base_cpuid.as_slice());
    let phys_bits = arch::layout::guest_phys_bits(host_phys_bits);
    arch::cpuid::set_phys_bits(base_cpuid.as_mut_slice(), phys_bits);
    info!("guest physical address width: {phys_bits} bits (host reports {host_phys_bits})");

    let pci = pci::create_pci_topology(
        &config.pci,
        arch::memory::ram_end(config.memory_bytes),
        phys_bits,
        &pio,
        &mmio,
    )?;
    let router = Arc::new(interrupts::GsiRouter::new(vm.clone()));
    let _disks = disks::Disks::attach(&config.disks, &vm, &mem, &pci, &mmio, router.clone())?;
    let _passthrough = passthrough::PassthroughGuard {
        passthrough: passthrough::Passthrough::attach(
            &config.devices,
            &vm,
            &mem,
            &pci,
            &mmio,
            &pio,
            router,
        )?,
        relocator: pci.relocator.clone(),
    };

    let mut acpi = arch::acpi::AcpiConfig::new(config.boot_vcpus);
    acpi.serial = config.serial != config::SerialMode::Off;
    acpi.pvpanic = true;
    acpi.add_pci_roots(&pci.acpi_roots());
    let rsdp = arch::acpi::create_acpi_tables(&mem, &acpi)?;

    let entry = arch::boot::configure_boot(
        &mem,
        &arch::boot::BootConfig {
            kernel: &kernel,
            cmdline: &config.cmdline,
            initramfs,
            memory_bytes: config.memory_bytes,
            rsdp,
        },
    )?;
    info!(
        "entering the kernel at {:#x} in {:?} mode",
        entry.rip.0, entry.mode
    );

    let mut vcpus = Vec::with_capacity(usize::from(config.boot_vcpus));
    for index in 0..config.boot_vcpus {
        let boot_entry = (index == 0).then_some(&entry);
        vcpus.push(vcpu::Vcpu::new(
            &vm,
            index,
            config.boot_vcpus,
            &base_cpuid,
            &mem,
            boot_entry,
        )?);
    }

    signals::install(&exit)?;
    let _terminal = (config.serial == config::SerialMode::Tty).then(console::RawTerminal::enter);
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(vcpu::ExitStats::default());
    let mut threads = Vec::with_capacity(vcpus.len());
    for (index, vcpu) in vcpus.into_iter().enumerate() {
        let buses = vcpu::VcpuBuses {
            pio: pio.clone(),
            mmio: mmio.clone(),
        };
        let (exit, stop, stats) = (exit.clone(), stop.clone(), stats.clone());
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || vcpu.run(buses, exit, stop, stats))
            .map_err(|e| Error::VcpuThread(index as u8, e))?;
        threads.push(handle);
    }

    let loop_result = event_loop(&exit, legacy.com1, config.serial == config::SerialMode::Tty);
    if loop_result.is_err() {
        exit.notify(ExitReason::Failure("event loop failed".into()));
    }
    stop_vcpus(&stop, threads);
    info!("viaduct vCPU exits: {stats}");
    loop_result?;

    if let Some(name) = signals::received() {
        return Err(Error::Signal(name));
    }
    match exit.reason() {
        Some(ExitReason::PowerOff) => Ok(Outcome::PowerOff),
        Some(ExitReason::Reboot) => Ok(Outcome::Reboot),
        Some(ExitReason::GuestPanic) => Err(Error::GuestPanic),
        Some(ExitReason::Failure(what)) => Err(Error::VmFailure(what)),
        None => Err(Error::VmFailure("the VM stopped without a reason".into())),
    }
}

/// Runs the event loop (stdin → COM1, exit watch) until the VM stops.
fn event_loop(
    exit: &ExitNotifier,
    com1: Option<legacy::Com1>,
    forward_stdin: bool,
) -> Result<(), Error> {
    let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().map_err(|e| Error::EventLoop(e.to_string()))?;
    let done = Arc::new(AtomicBool::new(false));
    let exit_event = exit.event().try_clone().map_err(Error::EventFd)?;
    manager.add_subscriber(Arc::new(Mutex::new(console::ExitWatcher::new(
        exit_event,
        done.clone(),
    ))));
    if let (Some(com1), true) = (com1, forward_stdin) {
        manager.add_subscriber(Arc::new(Mutex::new(console::StdinForwarder::new(
            com1.serial,
            com1.input_drained,
        ))));
    }
    while !done.load(Ordering::Acquire) {
        manager.run().map_err(|e| Error::EventLoop(e.to_string()))?;
    }
    Ok(())
}

/// Asks every vCPU thread to leave KVM_RUN and waits for it.
fn stop_vcpus(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + VCPU_STOP_TIMEOUT;
    for handle in threads {
        // A kick can land just before the thread re-enters KVM_RUN, so repeat it until it leaves.
        while !handle.is_finished() && Instant::now() < deadline {
            signals::kick(&handle);
            std::thread::sleep(Duration::from_millis(5));
        }
        if handle.is_finished() {
            let _ = handle.join();
        } else {
            warn!("a vCPU thread did not stop within {VCPU_STOP_TIMEOUT:?}");
        }
    }
}
