use super::*;
use crate::host::fixture::*;

fn b(s: &str) -> HostBdf {
    Fixture::bdf(s)
}

fn gpu_host() -> Fixture {
    let f = Fixture::new();
    f.driver(VFIO_PCI);
    f.pci("0000:01:00.0", GPU, Some("nvidia"), Some(12));
    f.pci("0000:01:00.1", GPU_AUDIO, Some("snd_hda_intel"), Some(12));
    f.pci("0000:00:10.0", NVME, Some("nvme"), Some(1));
    f
}

#[test]
fn bind_then_unbind_round_trips_through_the_state_file() {
    let f = gpu_host();
    let k = KernelSim::new(&f);
    let report = bind(&f.paths, &k, &[b("0000:00:10.0")], BindOptions::default()).unwrap();
    assert_eq!(
        report.bound,
        vec![Bound {
            bdf: b("0000:00:10.0"),
            from: Some("nvme".into()),
            changed: true,
            for_group: false
        }]
    );
    assert!(report.must_follow.is_empty());
    assert_eq!(
        k.log(),
        [
            "bus/pci/devices/0000:00:10.0/driver_override=vfio-pci",
            "bus/pci/drivers/nvme/unbind=0000:00:10.0",
            "bus/pci/drivers/vfio-pci/bind=0000:00:10.0",
        ]
    );
    assert_eq!(f.driver_of("0000:00:10.0").as_deref(), Some("vfio-pci"));
    let state = State::load(&f.paths.state_file).unwrap();
    assert_eq!(
        state.get("0000:00:10.0").unwrap().driver.as_deref(),
        Some("nvme")
    );

    let k = KernelSim::new(&f);
    let report = unbind(&f.paths, &k, &[b("0000:00:10.0")], false).unwrap();
    assert_eq!(report.devices.len(), 1);
    let d = &report.devices[0];
    assert_eq!(d.original, Original::Driver("nvme".into()));
    assert_eq!(d.now.as_deref(), Some("nvme"));
    assert!(d.restored() && d.changed);
    assert_eq!(
        k.log(),
        [
            "bus/pci/devices/0000:00:10.0/driver_override=",
            "bus/pci/drivers/vfio-pci/unbind=0000:00:10.0",
            "bus/pci/drivers/nvme/bind=0000:00:10.0",
        ]
    );
    assert_eq!(f.driver_of("0000:00:10.0").as_deref(), Some("nvme"));
    assert_eq!(f.override_of("0000:00:10.0"), "(null)");
    assert!(
        !f.paths.state_file.exists(),
        "the last record removes the file"
    );
}

#[test]
fn bind_without_vfio_pci_says_modprobe() {
    let f = Fixture::new();
    f.pci("0000:00:10.0", NVME, Some("nvme"), Some(1));
    let k = KernelSim::new(&f);
    let err = bind(&f.paths, &k, &[b("0000:00:10.0")], BindOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "vfio-pci is not loaded: run modprobe vfio-pci"
    );
    assert!(k.log().is_empty(), "nothing written: {:?}", k.log());
}

#[test]
fn bind_reports_the_group_mate_and_binds_it_with_group() {
    let f = gpu_host();
    let k = KernelSim::new(&f);
    let report = bind(&f.paths, &k, &[b("0000:01:00.0")], BindOptions::default()).unwrap();
    let follow: Vec<(u32, &str)> = report
        .must_follow
        .iter()
        .map(|(g, m)| (*g, m.name.as_str()))
        .collect();
    assert_eq!(follow, [(12, "0000:01:00.1")]);
    assert_eq!(
        f.driver_of("0000:01:00.1").as_deref(),
        Some("snd_hda_intel")
    );

    let opts = BindOptions {
        group: true,
        ..Default::default()
    };
    let report = bind(&f.paths, &k, &[b("0000:01:00.0")], opts).unwrap();
    assert!(report.must_follow.is_empty());
    let audio = report
        .bound
        .iter()
        .find(|x| x.bdf.as_str() == "0000:01:00.1")
        .unwrap();
    assert!(audio.for_group && audio.changed);
    assert_eq!(audio.from.as_deref(), Some("snd_hda_intel"));
    // The GPU was on vfio-pci already: left alone, its first record kept.
    assert!(!report.bound[0].changed);
    let state = State::load(&f.paths.state_file).unwrap();
    assert_eq!(
        state.get("0000:01:00.0").unwrap().driver.as_deref(),
        Some("nvidia")
    );

    // Unbinding only the GPU names the audio function left behind; --group takes both back.
    let k = KernelSim::new(&f);
    let report = unbind(&f.paths, &k, &[b("0000:01:00.0")], false).unwrap();
    assert_eq!(report.group_still_bound, ["0000:01:00.1"]);
    assert_eq!(f.driver_of("0000:01:00.0").as_deref(), Some("nvidia"));
    let report = unbind(&f.paths, &k, &[b("0000:01:00.1")], true).unwrap();
    assert!(report.devices[0].restored());
    assert_eq!(
        f.driver_of("0000:01:00.1").as_deref(),
        Some("snd_hda_intel")
    );
    assert!(!f.paths.state_file.exists());
}

#[test]
fn bridge_is_refused_unless_forced() {
    let f = Fixture::new();
    f.driver(VFIO_PCI);
    f.pci("0000:00:1c.0", BRIDGE, Some("pcieport"), Some(3));
    let k = KernelSim::new(&f);
    let err = bind(&f.paths, &k, &[b("0000:00:1c.0")], BindOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("0000:00:1c.0 is a bridge (PCI-bridge, class 060400)"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert!(k.log().is_empty());
    let forced = BindOptions {
        force: true,
        ..Default::default()
    };
    bind(&f.paths, &k, &[b("0000:00:1c.0")], forced).unwrap();
    assert_eq!(f.driver_of("0000:00:1c.0").as_deref(), Some("vfio-pci"));
}

#[test]
fn root_disk_controller_is_refused() {
    let f = gpu_host();
    f.root_on("0000:00:10.0", "nvme0n1p2", "259:2", false);
    let k = KernelSim::new(&f);
    let err = bind(&f.paths, &k, &[b("0000:00:10.0")], BindOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("0000:00:10.0 holds the host's root filesystem (on nvme0n1p2)"),
        "{err}"
    );
    assert!(k.log().is_empty());
    assert_eq!(f.driver_of("0000:00:10.0").as_deref(), Some("nvme"));
}

#[test]
fn failed_bind_gives_back_what_it_took() {
    let f = gpu_host();
    let k = KernelSim::new(&f);
    // The second device cannot be bound: the first, already on vfio-pci, is given back too.
    k.fail_next("0000:01:00.0/driver_override", libc::EIO);
    let msg = bind(
        &f.paths,
        &k,
        &[b("0000:00:10.0"), b("0000:01:00.0")],
        BindOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("cannot set driver_override of 0000:01:00.0"),
        "{msg}"
    );
    assert!(msg.contains("Input/output error"), "{msg}");
    assert_eq!(f.driver_of("0000:00:10.0").as_deref(), Some("nvme"));
    assert_eq!(f.driver_of("0000:01:00.0").as_deref(), Some("nvidia"));
    assert_eq!(f.override_of("0000:00:10.0"), "(null)");
    assert!(!f.paths.state_file.exists());
}

#[test]
fn bind_falls_back_to_drivers_probe_and_reports_a_bind_that_did_not_take() {
    let f = gpu_host();
    let k = KernelSim::new(&f);
    k.fail_next("drivers/vfio-pci/bind", libc::ENODEV);
    bind(&f.paths, &k, &[b("0000:00:10.0")], BindOptions::default()).unwrap();
    assert_eq!(
        k.log().last().map(String::as_str),
        Some("bus/pci/drivers_probe=0000:00:10.0")
    );
    assert_eq!(f.driver_of("0000:00:10.0").as_deref(), Some("vfio-pci"));

    // Both fail: the error is the bind's, and the device goes back to nvidia.
    k.fail_next("drivers/vfio-pci/bind", libc::EBUSY);
    k.fail_next("drivers_probe", libc::EBUSY);
    let msg = bind(&f.paths, &k, &[b("0000:01:00.0")], BindOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("cannot bind to vfio-pci 0000:01:00.0"),
        "{msg}"
    );
    assert!(msg.contains("Device or resource busy"), "{msg}");
    assert_eq!(f.driver_of("0000:01:00.0").as_deref(), Some("nvidia"));
}

#[test]
fn permission_denied_says_run_as_root() {
    let f = gpu_host();
    let k = KernelSim::new(&f);
    k.fail_next("driver_override", libc::EACCES);
    let msg = bind(&f.paths, &k, &[b("0000:00:10.0")], BindOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("cannot set driver_override of 0000:00:10.0: writing \"vfio-pci\" to "),
        "{msg}"
    );
    assert!(
        msg.ends_with("Permission denied (run viaduct as root)"),
        "{msg}"
    );
}

#[test]
fn unbind_of_unrecorded_vfio_device_lets_the_kernel_pick() {
    let f = Fixture::new();
    f.driver("nvme");
    f.pci("0000:00:10.0", NVME, Some("vfio-pci"), Some(1));
    let k = KernelSim::new(&f).native("0000:00:10.0", "nvme");
    let report = unbind(&f.paths, &k, &[b("0000:00:10.0")], false).unwrap();
    assert_eq!(report.devices[0].original, Original::Unknown);
    assert_eq!(report.devices[0].now.as_deref(), Some("nvme"));
    assert!(k
        .log()
        .contains(&"bus/pci/drivers_probe=0000:00:10.0".to_string()));
}

#[test]
fn unknown_device_is_named() {
    let f = gpu_host();
    let k = KernelSim::new(&f);
    let msg = bind(&f.paths, &k, &[b("0000:09:00.0")], BindOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("there is no PCI device 0000:09:00.0"),
        "{msg}"
    );
}
