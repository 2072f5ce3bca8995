//! `viaduct check`: is this host ready for passthrough? One line per requirement, `ok`, `warn`
//! or `FAIL`, each failure with what to do.
//!
//! Interrupt remapping is detected without dmesg: when it is on, the kernel's interrupt chips
//! are the remapping ones, so `/proc/interrupts` names `IR-PCI-MSI`, `IR-IO-APIC` and the like.
//! Failing that, an Intel IOMMU whose `ecap` has the IR bit (bit 3) can remap but nothing is
//! remapped yet (a warning), and `vfio_iommu_type1.allow_unsafe_interrupts=Y` lets VFIO run
//! without remapping (a warning: the device could raise interrupts it was not given).

use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::inventory::PciFunction;
use super::{read_attr, HostBdf, HostPaths};
use crate::dma::{memlock_plan, status_has_capability, MemlockPlan, MEMLOCK_MARGIN};
use crate::error::human;
use crate::sysfs::{self, DeviceKind};

/// How one requirement stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Met.
    Ok,
    /// Met with a caveat, or could not be verified.
    Warn,
    /// Not met: passthrough will not work until it is fixed.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// How it stands.
    pub status: Status,
    /// What was checked, e.g. `IOMMU`, `/dev/kvm`, a device's address.
    pub what: String,
    /// What was found and, when not ok, what to do.
    pub detail: String,
}

/// The whole report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// One line per requirement, in the order checked.
    pub lines: Vec<Line>,
}

impl Report {
    fn push(&mut self, status: Status, what: impl Into<String>, detail: impl Into<String>) {
        self.lines.push(Line {
            status,
            what: what.into(),
            detail: detail.into(),
        });
    }

    /// Whether nothing failed.
    pub fn ready(&self) -> bool {
        self.lines.iter().all(|l| l.status != Status::Fail)
    }

    /// The report as text, one line per requirement, then a verdict.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for l in &self.lines {
            out.push_str(&format!("{:<5} {}: {}\n", l.status, l.what, l.detail));
        }
        let fails = self
            .lines
            .iter()
            .filter(|l| l.status == Status::Fail)
            .count();
        if fails == 0 {
            out.push_str("this host is ready for passthrough\n");
        } else {
            out.push_str(&format!(
                "this host is not ready for passthrough: {fails} problem{} above\n",
                if fails == 1 { "" } else { "s" }
            ));
        }
        out
    }
}

/// The process's RLIMIT_MEMLOCK (`libc::RLIM_INFINITY` for unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memlock {
    /// Soft limit, bytes.
    pub soft: u64,
    /// Hard limit, bytes.
    pub hard: u64,
}

impl Memlock {
    /// This process's limits (unlimited if they cannot be read).
    pub fn current() -> Memlock {
        let mut lim = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: `lim` is a valid, writable rlimit that outlives the call.
        unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
        Memlock {
            soft: lim.rlim_cur,
            hard: lim.rlim_max,
        }
    }
}

/// What `viaduct check` was asked about.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// Devices: BDFs, sysfs paths or `path=` values.
    pub devices: &'a [String],
    /// Guest RAM in bytes.
    pub memory: u64,
    /// The hugepage size guest RAM would come from (`None`: ordinary memory).
    pub hugepages: Option<u64>,
    /// RLIMIT_MEMLOCK to judge.
    pub memlock: Memlock,
}

/// `CAP_IPC_LOCK`: pinned memory is not limited.
const CAP_IPC_LOCK: u32 = 14;
/// `CAP_SYS_RESOURCE`: may raise the hard limit.
const CAP_SYS_RESOURCE: u32 = 24;
/// Bit of the Intel IOMMU extended capability register: interrupt remapping supported.
const ECAP_IR: u64 = 1 << 3;

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn readable_writable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated path that outlives the call; access(2) only reads it.
    unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) == 0 }
}

fn check_iommu(paths: &HostPaths, r: &mut Report) {
    let tables = paths.sys.join("firmware/acpi/tables");
    let table = if tables.join("DMAR").exists() {
        Some("ACPI DMAR table: Intel VT-d")
    } else if tables.join("IVRS").exists() {
        Some("ACPI IVRS table: AMD-Vi")
    } else {
        None
    };
    let units = entries(&paths.sys.join("class/iommu"));
    let boot = "boot the host with intel_iommu=on iommu=pt (Intel) or amd_iommu=on iommu=pt (AMD)";
    match (units.is_empty(), table) {
        (false, t) => r.push(
            Status::Ok,
            "IOMMU",
            format!(
                "enabled ({}{} in /sys/class/iommu)",
                t.map(|t| format!("{t}; ")).unwrap_or_default(),
                units.join(", ")
            ),
        ),
        (true, Some(t)) => r.push(
            Status::Fail,
            "IOMMU",
            format!("the firmware describes one ({t}) but the kernel did not enable it: {boot}"),
        ),
        (true, None) => r.push(
            Status::Fail,
            "IOMMU",
            format!(
                "none enabled (no DMAR/IVRS table, /sys/class/iommu empty): enable VT-d or \
                 AMD-Vi in the firmware setup, then {boot}"
            ),
        ),
    }
}

fn check_kvm(paths: &HostPaths, r: &mut Report) {
    let kvm = paths.dev.join("kvm");
    match fs::OpenOptions::new().read(true).write(true).open(&kvm) {
        Ok(_) => r.push(Status::Ok, "/dev/kvm", "opened read-write"),
        Err(e) if e.kind() == ErrorKind::NotFound => r.push(
            Status::Fail,
            "/dev/kvm",
            "does not exist: load kvm_intel or kvm_amd and enable VT-x/AMD-V in the firmware",
        ),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => r.push(
            Status::Fail,
            "/dev/kvm",
            "permission denied: add your user to the kvm group (or run as root)",
        ),
        Err(e) => r.push(Status::Fail, "/dev/kvm", format!("cannot open it: {e}")),
    }
}

fn check_vfio_modules(paths: &HostPaths, r: &mut Report) {
    let module = |m: &str| paths.sys.join("module").join(m).exists();
    let mut missing = Vec::new();
    if !module("vfio") {
        missing.push("vfio");
    }
    if !module("vfio_pci") && !paths.pci_driver(super::VFIO_PCI).is_dir() {
        missing.push("vfio_pci");
    }
    if !module("vfio_iommu_type1") {
        missing.push("vfio_iommu_type1");
    }
    let container = paths.dev.join("vfio/vfio");
    if !missing.is_empty() {
        r.push(
            Status::Fail,
            "vfio modules",
            format!(
                "{} not loaded: run modprobe {}",
                missing.join(", "),
                if missing.contains(&"vfio_pci") {
                    "vfio-pci".to_string()
                } else {
                    missing.join(" ")
                }
            ),
        );
    } else if !container.exists() {
        r.push(
            Status::Fail,
            "vfio modules",
            "loaded, but /dev/vfio/vfio is missing: is devtmpfs mounted on /dev?",
        );
    } else {
        r.push(
            Status::Ok,
            "vfio modules",
            "vfio, vfio_pci and vfio_iommu_type1 loaded; /dev/vfio/vfio present",
        );
    }
}

fn check_interrupt_remapping(paths: &HostPaths, r: &mut Report) {
    const WHAT: &str = "interrupt remapping";
    let interrupts = fs::read_to_string(paths.proc.join("interrupts"));
    let chip = interrupts.as_ref().ok().and_then(|t| {
        t.split_whitespace()
            .find(|w| w.starts_with("IR-"))
            .map(|w| w.split('-').take(3).collect::<Vec<_>>().join("-"))
    });
    if let Some(chip) = chip {
        r.push(
            Status::Ok,
            WHAT,
            format!("on ({chip} interrupts in /proc/interrupts)"),
        );
        return;
    }
    let unsafe_ok = read_attr(
        &paths
            .sys
            .join("module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"),
    )
    .is_some_and(|v| v == "Y" || v == "1");
    if unsafe_ok {
        r.push(
            Status::Warn,
            WHAT,
            "not detected, but vfio_iommu_type1.allow_unsafe_interrupts=Y lets VFIO work \
             without it: a device could then raise interrupts it was not given; use it only with \
             devices you trust",
        );
        return;
    }
    let capable = entries(&paths.sys.join("class/iommu")).iter().any(|u| {
        read_attr(
            &paths
                .sys
                .join("class/iommu")
                .join(u)
                .join("intel-iommu/ecap"),
        )
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .is_some_and(|ecap| ecap & ECAP_IR != 0)
    });
    if capable {
        r.push(
            Status::Warn,
            WHAT,
            "the IOMMU supports it (ecap IR bit) but no remapped interrupt is in \
             /proc/interrupts yet; make sure intremap=off or nox2apic is not on the kernel \
             command line",
        );
    } else if interrupts.is_err() {
        r.push(
            Status::Warn,
            WHAT,
            "cannot tell: /proc/interrupts is not readable",
        );
    } else {
        r.push(
            Status::Fail,
            WHAT,
            "not available, and VFIO refuses devices without it: enable interrupt remapping \
             (part of VT-d/AMD-Vi in the firmware; no intremap=off), or for trusted devices only \
             load vfio_iommu_type1 with allow_unsafe_interrupts=1",
        );
    }
}

/// The group node check shared by PCI devices and mdevs.
fn group_node(paths: &HostPaths, group: u32) -> Result<String, String> {
    let node = paths.dev.join("vfio").join(group.to_string());
    if !node.exists() {
        return Err(format!(
            "/dev/vfio/{group} does not exist (the group is not bound to VFIO yet)"
        ));
    }
    if !readable_writable(&node) {
        return Err(format!(
            "/dev/vfio/{group} is not read-write for you: `chown $USER /dev/vfio/{group}` (or a \
             udev rule SUBSYSTEM==\"vfio\", OWNER=\"you\"), or run as root"
        ));
    }
    Ok(format!("/dev/vfio/{group} read-write"))
}

fn check_device(paths: &HostPaths, arg: &str, r: &mut Report) {
    let given = arg
        .split(',')
        .next()
        .unwrap_or(arg)
        .trim_start_matches("path=");
    let path = match given.parse::<HostBdf>() {
        Ok(bdf) => paths.pci_device(&bdf),
        Err(_) => Path::new(given).to_path_buf(),
    };
    let dev = match sysfs::resolve_device(&path) {
        Ok(d) => d,
        Err(e) => {
            let what = given.to_string();
            r.push(Status::Fail, what, e.to_string().replace('\n', " "));
            return;
        }
    };
    let what = dev.name.clone();
    if let DeviceKind::Mdev { parent } = &dev.kind {
        match group_node(paths, dev.group) {
            Ok(node) => r.push(
                Status::Ok,
                what,
                format!(
                    "mediated device of {parent}; IOMMU group {}; {node}",
                    dev.group
                ),
            ),
            Err(e) => r.push(Status::Fail, what, e),
        }
        return;
    }
    let bdf: HostBdf = match dev.name.parse() {
        Ok(b) => b,
        Err(e) => return r.push(Status::Fail, what, e.to_string()),
    };
    let f = match PciFunction::read(paths, &bdf) {
        Ok(f) => f,
        Err(e) => return r.push(Status::Fail, what, e.to_string()),
    };
    if let Some(reason) = f.not_ready_reason() {
        return r.push(
            Status::Fail,
            what,
            format!("{reason} (or pass it with managed=on)"),
        );
    }
    let group = dev.group;
    match group_node(paths, group) {
        Ok(node) => r.push(
            Status::Ok,
            what,
            format!(
                "{} {} on vfio-pci; IOMMU group {group} viable; {node}",
                f.ids(),
                sysfs::class_name(f.class)
            ),
        ),
        Err(e) => r.push(Status::Fail, what, e),
    }
}

fn check_memlock(paths: &HostPaths, memory: u64, limits: Memlock, r: &mut Report) {
    const WHAT: &str = "locked memory";
    let need = memory.saturating_add(MEMLOCK_MARGIN);
    let status = fs::read_to_string(paths.proc.join("self/status")).unwrap_or_default();
    let shown = |v: u64| {
        if v == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            human(v)
        }
    };
    if status_has_capability(&status, CAP_IPC_LOCK) {
        return r.push(
            Status::Ok,
            WHAT,
            format!(
                "CAP_IPC_LOCK (root): pinning {} of guest RAM is not limited",
                human(memory)
            ),
        );
    }
    let detail = format!(
        "a guest with {} of RAM pins {} (RAM + {} margin); RLIMIT_MEMLOCK is {} (hard {})",
        human(memory),
        human(need),
        human(MEMLOCK_MARGIN),
        shown(limits.soft),
        shown(limits.hard)
    );
    match memlock_plan(limits.soft, limits.hard, need) {
        MemlockPlan::Enough => r.push(Status::Ok, WHAT, detail),
        MemlockPlan::RaiseSoft(_) => r.push(
            Status::Ok,
            WHAT,
            format!("{detail}; viaduct raises the soft limit itself"),
        ),
        MemlockPlan::RaiseHard(_) if status_has_capability(&status, CAP_SYS_RESOURCE) => r.push(
            Status::Ok,
            WHAT,
            format!("{detail}; viaduct raises it itself (CAP_SYS_RESOURCE)"),
        ),
        MemlockPlan::RaiseHard(_) => r.push(
            Status::Fail,
            WHAT,
            format!(
                "{detail}: raise it with `ulimit -l {}` in the launching shell, \
                 LimitMEMLOCK={need} in a systemd unit, a memlock line in \
                 /etc/security/limits.conf, or run viaduct as root",
                need / 1024
            ),
        ),
    }
}

/// Whether the host can hold guest RAM of `memory` bytes, from its hugepage pool when
/// `hugepages` gives a page size.
fn check_guest_ram(paths: &HostPaths, memory: u64, hugepages: Option<u64>, r: &mut Report) {
    use super::memory::{check_guest_ram, hugepage_pools, mem_total};
    let pools = hugepage_pools(paths);
    match (
        check_guest_ram(memory, hugepages, mem_total(paths), &pools),
        hugepages,
    ) {
        (Ok(Some(pool)), Some(page)) => r.push(
            Status::Ok,
            "hugepages",
            format!(
                "{} of guest RAM needs {} hugepages of {}; {} of the pool's {} are available",
                human(memory),
                memory.div_ceil(page),
                human(page),
                pool.available(),
                pool.total
            ),
        ),
        (Ok(_), _) => r.push(
            Status::Ok,
            "guest RAM",
            match mem_total(paths) {
                Some(total) => format!("{} of the host's {}", human(memory), human(total)),
                None => format!("{} (the host's MemTotal is unknown)", human(memory)),
            },
        ),
        (Err(e), Some(_)) => r.push(Status::Fail, "hugepages", e.to_string()),
        (Err(e), None) => r.push(Status::Fail, "guest RAM", e.to_string()),
    }
}

/// Runs every check.
pub fn run(paths: &HostPaths, request: &Request<'_>) -> Report {
    let mut r = Report::default();
    check_iommu(paths, &mut r);
    check_kvm(paths, &mut r);
    check_vfio_modules(paths, &mut r);
    check_interrupt_remapping(paths, &mut r);
    for d in request.devices {
        check_device(paths, d, &mut r);
    }
    check_guest_ram(paths, request.memory, request.hugepages, &mut r);
    check_memlock(paths, request.memory, request.memlock, &mut r);
    r
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
