use super::*;
use crate::host::fixture::*;

const UNLIMITED: Memlock = Memlock {
    soft: libc::RLIM_INFINITY,
    hard: libc::RLIM_INFINITY,
};

fn request(devices: &[String], memory: u64, memlock: Memlock) -> Request<'_> {
    Request {
        devices,
        memory,
        hugepages: None,
        memlock,
    }
}

fn statuses(r: &Report) -> Vec<(Status, &str)> {
    r.lines
        .iter()
        .map(|l| (l.status, l.what.as_str()))
        .collect()
}

/// A ready Intel host with an NVMe on vfio-pci, alone in group 1.
fn ready() -> Fixture {
    let f = Fixture::new();
    f.ready_host();
    f.pci("0000:00:10.0", NVME, Some("vfio-pci"), Some(1));
    f.vfio_group_node(1);
    f
}

#[test]
fn ready_host_passes_line_by_line() {
    let f = ready();
    let devices = ["0000:00:10.0".to_string()];
    let r = run(&f.paths, &request(&devices, 512 << 20, UNLIMITED));
    assert_eq!(
        statuses(&r),
        [
            (Status::Ok, "IOMMU"),
            (Status::Ok, "/dev/kvm"),
            (Status::Ok, "vfio modules"),
            (Status::Ok, "interrupt remapping"),
            (Status::Ok, "0000:00:10.0"),
            (Status::Ok, "guest RAM"),
            (Status::Ok, "locked memory"),
        ],
        "{}",
        r.render()
    );
    assert!(r.ready());
    assert!(
        r.render()
            .contains("ok    guest RAM: 512 MiB of the host's 15.6 GiB"),
        "{}",
        r.render()
    );
    let text = r.render();
    assert!(
        text.contains(
            "ok    IOMMU: enabled (ACPI DMAR table: Intel VT-d; dmar0 in /sys/class/iommu)"
        ),
        "{text}"
    );
    assert!(
        text.contains("ok    interrupt remapping: on (IR-PCI-MSI interrupts"),
        "{text}"
    );
    assert!(text.contains("ok    0000:00:10.0: 1b36:0010 NVMe on vfio-pci; IOMMU group 1 viable; /dev/vfio/1 read-write"), "{text}");
    assert!(
        text.ends_with("this host is ready for passthrough\n"),
        "{text}"
    );
}

#[test]
fn missing_vfio_modules_fail_and_say_modprobe() {
    let f = ready();
    for m in ["vfio", "vfio_pci", "vfio_iommu_type1"] {
        fs::remove_dir_all(f.paths.sys.join("module").join(m)).unwrap();
    }
    fs::remove_dir_all(f.paths.pci_driver("vfio-pci")).unwrap();
    let r = run(&f.paths, &request(&[], 512 << 20, UNLIMITED));
    let vfio = r.lines.iter().find(|l| l.what == "vfio modules").unwrap();
    assert_eq!(vfio.status, Status::Fail);
    assert_eq!(
        vfio.detail,
        "vfio, vfio_pci, vfio_iommu_type1 not loaded: run modprobe vfio-pci"
    );
    assert!(!r.ready());
    assert!(r
        .render()
        .ends_with("not ready for passthrough: 1 problem above\n"));
}

#[test]
fn no_iommu_and_no_kvm_fail_with_remedies() {
    let f = Fixture::new();
    let r = run(&f.paths, &request(&[], 512 << 20, UNLIMITED));
    let text = r.render();
    assert!(text.contains("FAIL  IOMMU: none enabled"), "{text}");
    assert!(text.contains("intel_iommu=on iommu=pt"), "{text}");
    assert!(
        text.contains("FAIL  /dev/kvm: does not exist: load kvm_intel or kvm_amd"),
        "{text}"
    );
    // The firmware has the table but the kernel did not turn it on.
    fs::create_dir_all(f.paths.sys.join("firmware/acpi/tables")).unwrap();
    fs::write(f.paths.sys.join("firmware/acpi/tables/IVRS"), "").unwrap();
    let text = run(&f.paths, &request(&[], 512 << 20, UNLIMITED)).render();
    assert!(text.contains("FAIL  IOMMU: the firmware describes one (ACPI IVRS table: AMD-Vi) but the kernel did not enable it"), "{text}");
}

#[test]
fn interrupt_remapping_fallbacks() {
    let f = ready();
    fs::write(
        f.paths.proc.join("interrupts"),
        " 24: 1 PCI-MSI 512000-edge nvme0q0\n",
    )
    .unwrap();
    let line = |f: &Fixture| {
        run(&f.paths, &request(&[], 512 << 20, UNLIMITED))
            .lines
            .into_iter()
            .find(|l| l.what == "interrupt remapping")
            .unwrap()
    };
    // ecap f0205e has bit 3 set: capable but not seen.
    let l = line(&f);
    assert_eq!(l.status, Status::Warn, "{l:?}");
    assert!(l.detail.contains("ecap IR bit"), "{l:?}");
    fs::write(
        f.paths.sys.join("class/iommu/dmar0/intel-iommu/ecap"),
        "f02056\n",
    )
    .unwrap();
    let l = line(&f);
    assert_eq!(l.status, Status::Fail, "{l:?}");
    assert!(l.detail.contains("allow_unsafe_interrupts=1"), "{l:?}");
    fs::write(
        f.paths
            .sys
            .join("module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"),
        "Y\n",
    )
    .unwrap();
    let l = line(&f);
    assert_eq!(l.status, Status::Warn, "{l:?}");
}

#[test]
fn device_problems_are_named() {
    let f = ready();
    f.pci("0000:01:00.0", GPU, Some("vfio-pci"), Some(12));
    f.pci("0000:01:00.1", GPU_AUDIO, Some("snd_hda_intel"), Some(12));
    f.vfio_group_node(12);
    f.pci("0000:00:11.0", NVME, Some("nvme"), Some(2));
    f.pci("0000:00:12.0", NVME, Some("vfio-pci"), Some(3));
    let devices = [
        "path=/sys/bus/pci/devices/0000:01:00.0/".to_string(),
        "0000:00:11.0".to_string(),
        "0000:00:12.0".to_string(),
        "0000:09:00.0".to_string(),
    ];
    let r = run(&f.paths, &request(&devices, 512 << 20, UNLIMITED));
    let detail = |what: &str| {
        let l = r.lines.iter().find(|l| l.what == what).unwrap();
        assert_eq!(l.status, Status::Fail, "{l:?}");
        l.detail.clone()
    };
    let gpu = detail("0000:01:00.0");
    assert!(
        gpu.contains("IOMMU group 12 not viable: 0000:01:00.1 on snd_hda_intel"),
        "{gpu}"
    );
    let nvme = detail("0000:00:11.0");
    assert!(
        nvme.contains("on nvme, not vfio-pci: `viaduct bind 0000:00:11.0`"),
        "{nvme}"
    );
    let no_node = detail("0000:00:12.0");
    assert!(no_node.contains("/dev/vfio/3 does not exist"), "{no_node}");
    assert!(r
        .lines
        .iter()
        .any(|l| l.status == Status::Fail && l.detail.contains("no such file")));
}

#[test]
fn memlock_against_requested_memory() {
    let f = ready();
    // Without CAP_IPC_LOCK.
    fs::write(
        f.paths.proc.join("self/status"),
        "CapEff:\t0000000000000000\n",
    )
    .unwrap();
    let line = |memlock: Memlock, memory: u64| {
        run(&f.paths, &request(&[], memory, memlock))
            .lines
            .into_iter()
            .find(|l| l.what == "locked memory")
            .unwrap()
    };
    let small = Memlock {
        soft: 8 << 20,
        hard: 8 << 20,
    };
    let l = line(small, 4 << 30);
    assert_eq!(l.status, Status::Fail, "{l:?}");
    assert!(
        l.detail.contains("a guest with 4 GiB of RAM pins 4.1 GiB"),
        "{l:?}"
    );
    assert!(
        l.detail.contains("RLIMIT_MEMLOCK is 8 MiB (hard 8 MiB)"),
        "{l:?}"
    );
    assert!(l.detail.contains("ulimit -l 4259840"), "{l:?}");
    let raisable = Memlock {
        soft: 8 << 20,
        hard: libc::RLIM_INFINITY,
    };
    let l = line(raisable, 4 << 30);
    assert_eq!(l.status, Status::Ok);
    assert!(
        l.detail.ends_with("viaduct raises the soft limit itself"),
        "{l:?}"
    );
    assert_eq!(line(UNLIMITED, 4 << 30).status, Status::Ok);
}

#[test]
fn hugepages_are_counted_against_the_pool() {
    let f = ready();
    let devices = [];
    let mut req = request(&devices, 1 << 30, UNLIMITED);
    req.hugepages = Some(2 << 20);
    let r = run(&f.paths, &req);
    let text = r.render();
    assert!(
        text.contains(
            "ok    hugepages: 1 GiB of guest RAM needs 512 hugepages of 2 MiB; 1024 of the pool's \
             1024 are available"
        ),
        "{text}"
    );
    // Too few free: a failure with the numbers and the remedy.
    f.hugepages(2048, 1024, 100);
    let r = run(&f.paths, &req);
    let text = r.render();
    assert!(!r.ready());
    assert!(
        text.contains("FAIL  hugepages: --memory size=1 GiB with 2 MiB hugepages needs 512 free")
            && text.contains("only 100 (100 free"),
        "{text}"
    );
    // More RAM than the host has.
    let r = run(&f.paths, &request(&devices, 64 << 30, UNLIMITED));
    assert!(r
        .render()
        .contains("FAIL  guest RAM: --memory size=64 GiB is more than"));
}
