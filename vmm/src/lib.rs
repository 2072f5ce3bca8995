//! The viaduct VMM: creates the KVM VM and its vCPUs, guest memory, wires the devices and runs
//! the event loop until the guest powers off, reboots or fails.
//!
//! `run` reads top to bottom like the boot sequence. Address layout and boot-protocol details
//! belong to `arch`, device behaviour to `devices`; this crate only puts them together.

// Tests may unwrap: a panic there is a failed test, not a dead VMM.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod config;
mod console;
mod console_rng;
mod control;
pub mod device_manager;
pub mod disks;
mod interrupts;
mod legacy;
pub mod memory;
mod nets;
mod passthrough;
mod payload;
pub mod seccomp;
pub mod signals;
mod vcpu;
mod vm;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use log::{info, warn};
use vm_memory::GuestMemoryBackend;

use config::VmConfig;
use device_manager::guest_map::GuestMappings;
use device_manager::topology::{self, LayoutError};
use device_manager::{AttachError, ConfigAccessError, DeviceManager};
use devices::bus::{Bus, BusError};
use devices::exit::{ExitNotifier, ExitReason};
pub use vcpu::VcpuFailure;

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
    #[error("{0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// A vCPU ioctl failed.
    #[error("vCPU {index}: {op} failed")]
    Vcpu {
        /// The vCPU.
        index: u8,
        /// The operation.
        op: &'static str,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
    /// Guest RAM could not be set up as `--memory` asks.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// Loading the kernel or writing boot information failed.
    #[error(transparent)]
    Boot(#[from] arch::boot::BootError),
    /// Building the ACPI tables failed.
    #[error(transparent)]
    Acpi(#[from] arch::acpi::AcpiError),
    /// The boot vCPU state could not be written.
    #[error("cannot write the boot vCPU's state")]
    BootState(#[source] arch::regs::RegsError),
    /// `--serial file=` could not be opened.
    #[error("--serial file={}: cannot open for appending", path.display())]
    SerialFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// A legacy device's ports are taken.
    #[error("cannot place the legacy device at port {port:#x}")]
    LegacyPort {
        /// Its first port.
        port: u16,
        /// The conflict.
        source: BusError,
    },
    /// The ACPI power-management device could not be built.
    #[error("cannot build the ACPI power-management device")]
    AcpiPm(#[source] devices::acpi_pm::AcpiPmError),
    /// A platform device (GED, hotplug controller) could not be put on the MMIO bus.
    #[error("cannot place the platform device at {base:#x}")]
    PlatformDevice {
        /// Its base address.
        base: u64,
        /// The conflict.
        source: BusError,
    },
    /// The control API could not listen.
    #[error(transparent)]
    Api(#[from] api::SocketError),
    /// A seccomp filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// The PCI segments could not be laid out.
    #[error(transparent)]
    PciLayout(#[from] LayoutError),
    /// A segment's config-access path could not be put on its bus.
    #[error(transparent)]
    ConfigAccess(#[from] ConfigAccessError),
    /// A PCI device (disk or passthrough) could not be attached; the message names it.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// The event loop failed.
    #[error("event loop")]
    EventLoop(#[source] event_manager::Error),
    /// A signal handler could not be installed.
    #[error("cannot install the handler of signal {signal}")]
    SignalHandler {
        /// The signal.
        signal: i32,
        /// The OS error.
        source: vmm_sys_util::errno::Error,
    },
    /// The thread that loads the kernel and initramfs could not be started.
    #[error("cannot start the thread that loads the kernel and initramfs")]
    PayloadThread(#[source] std::io::Error),
    /// A vCPU thread could not be started.
    #[error("cannot start the thread for vCPU {0}")]
    VcpuThread(u8, #[source] std::io::Error),
    /// The guest kernel panicked (reported through pvpanic).
    #[error("the guest kernel panicked")]
    GuestPanic,
    /// A vCPU stopped in a way the guest did not ask for.
    #[error("the VM failed")]
    VmFailure(#[source] VcpuFailure),
    /// Guest RAM could not be DMA-mapped beside the booting guest, so the VM was stopped
    /// (the passed-through devices never got bus mastering).
    #[error(
        "guest RAM could not be DMA-mapped for the passed-through devices, so the VM was \
         stopped: {0}"
    )]
    GuestRamDma(String),
    /// The VM stopped and nobody said why (a bug).
    #[error("the VM stopped without a reason")]
    NoExitReason,
    /// viaduct was asked to stop by a signal.
    #[error("stopped by signal {0}")]
    Signal(&'static str),
    /// `--console file=` could not be opened.
    #[error("--console file={}: cannot open for writing", path.display())]
    ConsoleFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// stdin could not be duplicated for `--console tty`.
    #[error("--console tty: cannot duplicate stdin for the guest's console input")]
    ConsoleInput(#[source] std::io::Error),
    /// The `--rng` source could not be opened.
    #[error(transparent)]
    Rng(#[from] devices::virtio::rng::RngError),
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

/// Formats an error and its whole `source()` chain as one line, joined with `": "`. Control
/// characters a message carries (a newline in a value the user gave) are escaped, so the line
/// stays one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = String::new();
    let mut next = Some(error);
    while let Some(e) = next {
        if !message.is_empty() {
            message.push_str(": ");
        }
        for c in e.to_string().chars() {
            if c.is_control() {
                message.extend(c.escape_default());
            } else {
                message.push(c);
            }
        }
        next = e.source();
    }
    message
}

/// How long a vCPU thread gets to leave KVM_RUN after being kicked at shutdown.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// The VM's PCI devices: the device manager and the VFIO container. Dropping it tears them down
/// in the one safe order: every device detached (memory slots, mmaps, interrupts, device fds),
/// then guest RAM unmapped from the IOMMU and the container closed.
pub(crate) struct PciDevices {
    manager: Arc<DeviceManager>,
    passthrough: passthrough::Passthrough,
}

impl PciDevices {
    /// Detaches every device and releases the container (idempotent).
    fn release(&self) {
        // A mapping of guest RAM still running is stopped and ends first: it uses the
        // container.
        self.passthrough.stop_ram_map();
        self.passthrough.finish_ram_map();
        self.manager.detach_all();
        self.passthrough.release();
    }
}

impl Drop for PciDevices {
    fn drop(&mut self) {
        self.release();
    }
}

/// The hotplug side of the platform, present when the VM has a control API: the ACPI GED that
/// interrupts the guest, the PCI hotplug controller the guest's ACPI code talks to, and what the
/// guest ejected.
struct Hotplug {
    ged: Arc<Mutex<devices::acpi_ged::AcpiGed>>,
    controller: Arc<Mutex<devices::pci_hotplug::PciHotplugController>>,
    ejections: Arc<control::Ejections>,
    /// The API's control, once it exists (the eject callback reaches it through this).
    control: Arc<std::sync::OnceLock<std::sync::Weak<control::VmControl>>>,
}

/// Puts the GED (interrupting on `ACPI_GED_GSI`) and the PCI hotplug controller on the MMIO
/// bus.
fn create_hotplug(vm: &kvm_ioctls::VmFd, mmio: &Bus, segments: u16) -> Result<Hotplug, Error> {
    use arch::layout;
    let irq = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)
        .map_err(Error::EventFd)?;
    vm.register_irqfd(&irq, layout::ACPI_GED_GSI)
        .map_err(|e| Error::Kvm("KVM_IRQFD (ACPI GED)", e))?;
    let ged = Arc::new(Mutex::new(devices::acpi_ged::AcpiGed::new(irq)));
    let ejections = Arc::new(control::Ejections::default());
    let control: Arc<std::sync::OnceLock<std::sync::Weak<control::VmControl>>> =
        Arc::new(std::sync::OnceLock::new());
    let (seen, reach) = (ejections.clone(), control.clone());
    let controller = Arc::new(Mutex::new(devices::pci_hotplug::PciHotplugController::new(
        segments,
        Box::new(move |segment, slot| {
            // On a vCPU thread: record and wake; the detach happens elsewhere.
            seen.record(segment, slot);
            if let Some(c) = reach.get().and_then(std::sync::Weak::upgrade) {
                c.ejected_by_guest(segment, slot);
            }
        }),
    )));
    let place = |dev: Arc<Mutex<dyn devices::bus::BusDevice>>, base: u64, len: u64| {
        mmio.insert(dev, base, len)
            .map_err(|source| Error::PlatformDevice { base, source })
    };
    place(
        ged.clone(),
        layout::ACPI_GED_MMIO_START,
        layout::ACPI_GED_MMIO_SIZE,
    )?;
    place(
        controller.clone(),
        layout::PCI_HOTPLUG_MMIO_START,
        layout::PCI_HOTPLUG_MMIO_SIZE,
    )?;
    Ok(Hotplug {
        ged,
        controller,
        ejections,
        control,
    })
}

/// What the VM is built on besides its devices: guest RAM registered with KVM, the exit
/// notifier, the legacy devices and the CPUID the vCPUs start from.
struct Platform {
    exit: ExitNotifier,
    legacy: legacy::LegacyDevices,
    base_cpuid: kvm_bindings::CpuId,
    phys_bits: u8,
}

/// Builds the [`Platform`] of `vm` (while its passthrough devices are being opened).
fn build_platform(
    kvm: &kvm_ioctls::Kvm,
    vm: &kvm_ioctls::VmFd,
    mem: &memory::GuestMemoryMmap,
    serial: &config::SerialMode,
) -> Result<Platform, Error> {
    memory::register_memory(vm, mem)?;
    let exit = ExitNotifier::new().map_err(Error::EventFd)?;
    let legacy = legacy::create_legacy_devices(vm, serial, &exit)?;
    let mut base_cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| Error::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
    let host_phys_bits = arch::cpuid::reported_phys_bits(base_cpuid.as_slice());
    let phys_bits = arch::layout::guest_phys_bits(host_phys_bits);
    arch::cpuid::set_phys_bits(base_cpuid.as_mut_slice(), phys_bits);
    info!("guest physical address width: {phys_bits} bits (host reports {host_phys_bits})");
    Ok(Platform {
        exit,
        legacy,
        base_cpuid,
        phys_bits,
    })
}

/// Boots the VM described by `config` and runs it until it stops.
pub fn run(config: VmConfig) -> Result<Outcome, Error> {
    let started = Instant::now();
    // Before anything that takes long or holds host state (the launcher has installed them
    // already; again does no harm): a SIGTERM from here on is recorded and stops the VM
    // cleanly (see `signals`).
    signals::install()?;
    // The API socket first: a path that cannot be used stops viaduct before anything is built.
    let mut api_listener = match &config.api {
        Some(api) => Some(api::ApiListener::open(&api.socket)?),
        None => None,
    };
    // Guest RAM is declared before the VM, every vCPU and every device (and the VFIO container
    // that pins it), so it is dropped after them: locals drop in reverse order. `ram` owns the
    // host mappings; everything else holds clones of the regions.
    let ram = memory::create_guest_memory(config.memory_bytes, &config.memory)?;
    // The filters are compiled now, so a bad list fails before anything runs; each thread
    // applies its own when it starts, the VMM thread just before the event loop.
    let filters = seccomp::Filters::new(config.seccomp)?;
    {
        let filters = filters.clone();
        devices::thread_hook::set_worker_start(Box::new(move || {
            filters
                .apply(seccomp::ThreadKind::Worker)
                .map_err(|e| error_chain(&e))
        }));
    }
    info!(
        "guest RAM: {} MiB of {}{} memory, mapped in {:?}",
        config.memory_bytes >> 20,
        if ram.hugetlb {
            format!("{} MiB hugepage", ram.page_size >> 20)
        } else {
            "ordinary".to_string()
        },
        if config.memory.shared {
            ", shared"
        } else {
            ", private"
        },
        started.elapsed()
    );
    if config.memory.prefault == Some(true) {
        let threads = memory::available_cpus();
        info!(
            "prefaulting guest RAM: {} MiB with up to {threads} thread(s)",
            config.memory_bytes >> 20
        );
        let stats = memory::prefault_until(
            &ram.mem,
            ram.page_size,
            ram.hugetlb,
            threads,
            signals::terminating(),
        )?;
        if let (true, Some(name)) = (stats.stopped, signals::received()) {
            info!(
                "guest RAM prefault stopped by {name} after {} of {} MiB, {:?}; no guest was \
                 started",
                stats.bytes >> 20,
                config.memory_bytes >> 20,
                stats.elapsed
            );
            return Err(Error::Signal(name));
        }
        let (rss, hugetlb) = memory::resident_bytes();
        info!(
            "guest RAM prefaulted: {} MiB in {:?} with {} thread(s){}; VmRSS {} MiB, \
             HugetlbPages {} MiB, before the guest's first instruction",
            stats.bytes >> 20,
            stats.elapsed,
            stats.threads,
            if stats.touched {
                " (touching each page: no MADV_POPULATE_WRITE)"
            } else {
                ""
            },
            rss >> 20,
            hugetlb >> 20
        );
    }
    // `ram` itself stays alive to the end (it owns the host mappings behind `mem`).
    let mem = ram.mem.clone();
    // A wrong --kernel stops viaduct here, before any device is opened; the load itself
    // starts next, on a thread of its own.
    arch::boot::probe_kernel(&config.kernel)?;
    // The kernel and initramfs go into guest RAM on a thread of their own while the VM and its
    // devices are built, and beside the DMA mapping of guest RAM once that starts (both fault
    // its pages in; whichever comes first saves the other the work). Declared after `ram`, so
    // it is joined before guest RAM is unmapped.
    let payload = payload::PayloadLoad::start(
        ram.mem.clone(),
        config.kernel.clone(),
        config.initramfs.clone(),
        config.memory_bytes,
    )?;
    let kvm = vm::open_kvm()?;
    let vm = Arc::new(vm::create_vm(&kvm)?);

    let router: Arc<dyn vfio_dev::routing::InterruptRouter> =
        Arc::new(interrupts::GsiRouter::new(vm.clone()));
    // Passthrough devices are opened before the PCI windows are laid out: the host IOMMU's
    // reach (known once the container has a device) decides where the 64-bit windows go.
    // Unless told, large private RAM is prefaulted in parallel just before the first DMA
    // mapping (the pin would fault it in on one thread).
    // At start the mapping runs beside the booting guest, with the CPUs its vCPUs leave; a
    // device hot-plugged later may use them all.
    let prefault_with = |cpus: usize| {
        memory::prefault_before_pin(&config.memory, config.memory_bytes, ram.hugetlb, cpus).then(
            || passthrough::PrefaultBeforeMap {
                mem: mem.clone(),
                page_size: ram.page_size,
                threads: cpus,
            },
        )
    };
    let cpus = memory::available_cpus();
    let passthrough = passthrough::Passthrough::new(
        vm.clone(),
        &mem,
        router.clone(),
        config.pci.vfio_p2p_dma,
        passthrough::Prefaults {
            at_start: prefault_with(memory::cpus_beside_guest(cpus, config.boot_vcpus)),
            hot_plug: prefault_with(cpus),
            while_held: (config.memory.prefault != Some(false)).then_some(
                passthrough::PrefaultWhileHeld {
                    page_size: ram.page_size,
                    hugetlb: ram.hugetlb,
                    threads: cpus,
                },
            ),
        },
    );
    // The kernel resets each device as viaduct opens it (an FLR waits 100 ms); the devices are
    // opened on threads of their own while the rest of the VM is built, and their resets
    // overlap that and each other.
    let (opened, platform) = std::thread::scope(|scope| {
        let open_all = || {
            let opening = Instant::now();
            let opened = passthrough.open_all_for_boot(&config.devices);
            if let Ok(devices) = &opened {
                if !devices.is_empty() {
                    info!(
                        "{} passthrough device(s) opened in {:?}, beside the VM's build",
                        devices.len(),
                        opening.elapsed()
                    );
                }
            }
            opened
        };
        let opens = (!config.devices.is_empty())
            .then(|| {
                std::thread::Builder::new()
                    .name("vfio-open".into())
                    .spawn_scoped(scope, open_all)
                    .ok()
            })
            .flatten();
        let platform = build_platform(&kvm, &vm, &mem, &config.serial);
        let opened = match opens {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            None => open_all(),
        };
        (opened, platform)
    });
    let Platform {
        exit,
        legacy,
        base_cpuid,
        phys_bits,
    } = platform?;
    let opened = opened?;
    let pio = Arc::new(legacy.pio);
    let mmio = Arc::new(Bus::new());
    let mut demand: Vec<_> = opened.iter().flat_map(|o| o.demand()).collect();
    demand.extend(
        config
            .disks
            .iter()
            .map(|d| (d.pci_segment, disks::bar_spec())),
    );
    // The console and rng files are opened now, before anything is laid out or attached.
    let console = console_rng::console_device(&config.console)?;
    let resizer = console
        .as_ref()
        .filter(|_| config.console == config::ConsoleMode::Tty)
        .map(|c| c.resizer());
    let rng = console_rng::rng_device(&config.rng)?;
    demand.extend(
        console
            .iter()
            .map(|_| (console_rng::SEGMENT, console_rng::bar_spec())),
    );
    demand.push((console_rng::SEGMENT, console_rng::bar_spec()));
    demand.extend(
        config
            .nets
            .iter()
            .map(|n| (n.pci_segment, disks::bar_spec())),
    );
    let ram_end = arch::memory::ram_end(config.memory_bytes);
    let iova_ranges = passthrough.iova_ranges();
    let plan = topology::plan_segments(
        &config.pci,
        ram_end,
        phys_bits,
        iova_ranges.as_deref(),
        &demand,
    )?;
    match plan.reach {
        topology::Reach::Inside => {
            info!("PCI layout: every 64-bit window is inside the host IOMMU's reach (peer-to-peer)")
        }
        topology::Reach::Beyond { limit } => warn!(
            "peer-to-peer DMA: the 64-bit BARs of the passed-through devices do not fit below \
             {limit:#x}, the last address the host IOMMU translates, so the 64-bit windows go \
             beyond it and BARs placed there get no peer-to-peer mapping (each is named below). \
             For peer-to-peer use a host IOMMU with more address bits, fewer or smaller devices \
             per segment, or larger mmio64_aperture_weight for the busy segments"
        ),
        topology::Reach::Unknown => {}
    }
    let guest: Arc<dyn GuestMappings> = vm.clone();
    let manager = DeviceManager::new(
        &plan.segments,
        guest,
        mmio.clone(),
        pio.clone(),
        mem.num_regions() as u32,
    )?;
    let pci_devices = Arc::new(PciDevices {
        passthrough,
        manager,
    });
    let hotplug = match &config.api {
        Some(_) => Some(create_hotplug(&vm, &mmio, plan.segments.len() as u16)?),
        None => None,
    };
    let dma_mem = Arc::new(mem.clone());
    if let Some(console) = console {
        console_rng::attach(
            &pci_devices.manager,
            "__console",
            Box::new(console),
            &dma_mem,
            &router,
        )?;
    }
    for disk in &config.disks {
        disks::attach(&pci_devices.manager, disk, &dma_mem, &router)?;
    }
    for net in &config.nets {
        nets::attach(&pci_devices.manager, net, &dma_mem, &router)?;
    }
    console_rng::attach(
        &pci_devices.manager,
        "__rng",
        Box::new(rng),
        &dma_mem,
        &router,
    )?;
    for device in opened {
        pci_devices
            .passthrough
            .attach_opened(&pci_devices.manager, device)?;
    }
    if !config.devices.is_empty() || !config.disks.is_empty() {
        info!("PCI devices attached, {:?} after start", started.elapsed());
    }
    // Guest RAM is DMA-mapped beside the booting guest; bus mastering waits for it.
    pci_devices.passthrough.start_ram_map(&filters, &exit)?;

    let waiting = Instant::now();
    let payload::Payload {
        kernel,
        kernel_took,
        initramfs,
        initramfs_took,
    } = payload.wait()?;
    info!(
        "kernel {}: {}, loaded in {kernel_took:?}{}, beside the VM's build; waited {:?} for it",
        config.kernel.display(),
        kernel.image,
        match &config.initramfs {
            Some(path) => format!(", initramfs {} in {initramfs_took:?}", path.display()),
            None => String::new(),
        },
        waiting.elapsed()
    );

    let mut acpi = arch::acpi::AcpiConfig::new(config.boot_vcpus);
    acpi.serial = config.serial != config::SerialMode::Off;
    acpi.pvpanic = true;
    let roots: Vec<_> = plan.segments.iter().map(|s| s.acpi_root()).collect();
    acpi.add_pci_roots(&roots);
    acpi.hotplug = hotplug.is_some();
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
        "entering the kernel at {:#x} in {:?} mode, {:?} after start",
        entry.rip.0,
        entry.mode,
        started.elapsed()
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

    // The control API, on threads of its own, started before the vCPUs so that nothing runs
    // yet if it cannot start; stopped (and its socket removed) before the devices are released.
    let mut api = None;
    if let (Some(api_config), Some(h)) = (&config.api, &hotplug) {
        let control = Arc::new(control::VmControl::new(
            config.clone(),
            pci_devices.clone(),
            exit.clone(),
            h.ged.clone(),
            h.controller.clone(),
            h.ejections.clone(),
            api_config.eject_timeout,
        ));
        let _ = h.control.set(Arc::downgrade(&control));
        api = Some((
            api::ApiServer::serve(
                api_listener.take().expect("opened with the API config"),
                control.clone(),
                filters.clone(),
            )?,
            control,
        ));
    }

    signals::stop_vm_on_termination(&exit)?;
    let resize = match resizer {
        Some(resizer) => {
            let event = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)
                .map_err(Error::EventFd)?;
            signals::install_winch(&event)?;
            Some(console::ResizeWatcher::new(event, resizer))
        }
        None => None,
    };
    let _terminal = (config.serial == config::SerialMode::Tty
        || config.console == config::ConsoleMode::Tty)
        .then(console::RawTerminal::enter);
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(vcpu::ExitStats::default());
    let mut threads = Vec::with_capacity(vcpus.len());
    for (index, vcpu) in vcpus.into_iter().enumerate() {
        let buses = vcpu::VcpuBuses {
            pio: pio.clone(),
            mmio: mmio.clone(),
        };
        let (exit, stop, stats) = (exit.clone(), stop.clone(), stats.clone());
        let filters = filters.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || vcpu.run(buses, exit, stop, stats, filters))
            .map_err(|e| Error::VcpuThread(index as u8, e))?;
        threads.push(handle);
    }

    let guest_started = Instant::now();
    let loop_result = filters
        .apply(seccomp::ThreadKind::Vmm)
        .map_err(Error::from)
        .and_then(|()| {
            event_loop(
                &exit,
                legacy.com1,
                config.serial == config::SerialMode::Tty,
                resize,
            )
        });
    let guest_ran = guest_started.elapsed();
    if loop_result.is_err() {
        exit.notify(ExitReason::Failure);
    }
    // A mapping of guest RAM still running beside the guest is given up first: it lets go of a
    // vCPU held at its gate, and the VM does not wait for the rest of its RAM to be pinned.
    pci_devices.passthrough.stop_ram_map();
    let failure = stop_vcpus(&stop, threads);
    info!("viaduct vCPU exits: {stats}");
    let teardown = Instant::now();
    // Stop the API first (no request may start on a VM being torn down), detach every device
    // (closing their VFIO fds), and only then drop the control, which gives back the devices it
    // bound with managed=on.
    let control = api.map(|(mut server, control)| {
        server.stop();
        control
    });
    let ram_map_failure = pci_devices.passthrough.take_ram_map_failure();
    pci_devices.release();
    drop(control);
    drop(hotplug);
    drop(pci_devices);
    info!(
        "the guest ran for {guest_ran:?}; devices released in {:?}; {:?} since start",
        teardown.elapsed(),
        started.elapsed()
    );
    loop_result?;
    if let Some(why) = ram_map_failure {
        return Err(Error::GuestRamDma(why));
    }

    if let Some(name) = signals::received() {
        return Err(Error::Signal(name));
    }
    match exit.reason() {
        Some(ExitReason::PowerOff) => Ok(Outcome::PowerOff),
        Some(ExitReason::Reboot) => Ok(Outcome::Reboot),
        Some(ExitReason::GuestPanic) => Err(Error::GuestPanic),
        Some(ExitReason::Failure) => Err(failure.map_or(Error::NoExitReason, Error::VmFailure)),
        None => Err(Error::NoExitReason),
    }
}

/// Runs the event loop (stdin → COM1, terminal resizes → virtio console, exit watch) until the
/// VM stops.
fn event_loop(
    exit: &ExitNotifier,
    com1: Option<legacy::Com1>,
    forward_stdin: bool,
    resize: Option<console::ResizeWatcher>,
) -> Result<(), Error> {
    let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().map_err(Error::EventLoop)?;
    let done = Arc::new(AtomicBool::new(false));
    let exit_event = exit.event().try_clone().map_err(Error::EventFd)?;
    manager.add_subscriber(Arc::new(Mutex::new(console::ExitWatcher::new(
        exit_event,
        done.clone(),
    ))));
    let mut serial_watch = com1
        .as_ref()
        .map(|com1| console::LostInterruptWatch::new(com1.serial.clone()));
    if let (Some(com1), true) = (com1, forward_stdin) {
        manager.add_subscriber(Arc::new(Mutex::new(console::StdinForwarder::new(
            com1.serial,
            com1.input_drained,
        ))));
    }
    if let Some(watcher) = resize {
        manager.add_subscriber(Arc::new(Mutex::new(watcher)));
    }
    // Without COM1 nothing needs a periodic look: wait for events only.
    let timeout_ms = match serial_watch {
        Some(_) => console::LostInterruptWatch::PERIOD.as_millis() as i32,
        None => -1,
    };
    while !done.load(Ordering::Acquire) {
        manager
            .run_with_timeout(timeout_ms)
            .map_err(Error::EventLoop)?;
        if let Some(watch) = serial_watch.as_mut() {
            watch.tick();
        }
    }
    if let Some(watch) = serial_watch {
        watch.report();
    }
    Ok(())
}

/// Asks every vCPU thread to leave KVM_RUN and waits for it; returns the first failure a vCPU
/// reported.
fn stop_vcpus(
    stop: &AtomicBool,
    threads: Vec<JoinHandle<Option<VcpuFailure>>>,
) -> Option<VcpuFailure> {
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + VCPU_STOP_TIMEOUT;
    let mut failure = None;
    for handle in threads {
        // A kick can land just before the thread re-enters KVM_RUN, so repeat it until it leaves.
        while !handle.is_finished() && Instant::now() < deadline {
            signals::kick(&handle);
            std::thread::sleep(Duration::from_millis(5));
        }
        if handle.is_finished() {
            if let Ok(Some(f)) = handle.join() {
                failure.get_or_insert(f);
            }
        } else {
            warn!("a vCPU thread did not stop within {VCPU_STOP_TIMEOUT:?}");
        }
    }
    failure
}
