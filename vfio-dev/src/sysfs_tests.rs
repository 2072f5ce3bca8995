use std::os::unix::fs::symlink;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A fake sysfs tree in a temporary directory, laid out like the real one: devices under
/// `devices/pci0000:00/`, `bus/pci/devices/<bdf>` symlinks to them, drivers under
/// `bus/pci/drivers/`, groups under `kernel/iommu_groups/<n>/devices/`.
pub(crate) struct FakeSysfs {
    pub(crate) root: PathBuf,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl FakeSysfs {
    pub(crate) fn new() -> Self {
        let root = std::env::temp_dir().join(format!(
            "viaduct-sysfs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
        fs::create_dir_all(root.join("bus/mdev/devices")).unwrap();
        fs::create_dir_all(root.join("kernel/iommu_groups")).unwrap();
        FakeSysfs { root }
    }

    fn link_driver(&self, dir: &Path, driver: Option<&str>) {
        if let Some(d) = driver {
            let drv = self.root.join("bus/pci/drivers").join(d);
            fs::create_dir_all(&drv).unwrap();
            symlink(&drv, dir.join("driver")).unwrap();
        }
    }

    fn link_group(&self, dir: &Path, name: &str, group: u32) {
        let g = self
            .root
            .join(format!("kernel/iommu_groups/{group}/devices"));
        fs::create_dir_all(&g).unwrap();
        symlink(g.parent().unwrap(), dir.join("iommu_group")).unwrap();
        symlink(dir, g.join(name)).unwrap();
    }

    /// Adds PCI function `bdf`; `group` None models a host with the IOMMU off.
    pub(crate) fn add_pci(
        &self,
        bdf: &str,
        ids: (u16, u16, u32),
        driver: Option<&str>,
        group: Option<u32>,
    ) -> PathBuf {
        let dir = self.root.join("devices/pci0000:00").join(bdf);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("vendor"), format!("0x{:04x}\n", ids.0)).unwrap();
        fs::write(dir.join("device"), format!("0x{:04x}\n", ids.1)).unwrap();
        fs::write(dir.join("class"), format!("0x{:06x}\n", ids.2)).unwrap();
        let mut config = vec![0u8; 64];
        config[0x0e] = if ids.2 >> 8 == 0x0604 { 0x01 } else { 0x80 };
        fs::write(dir.join("config"), config).unwrap();
        self.link_driver(&dir, driver);
        if let Some(g) = group {
            self.link_group(&dir, bdf, g);
        }
        symlink(&dir, self.root.join("bus/pci/devices").join(bdf)).unwrap();
        dir
    }

    /// Adds mdev `uuid` under PCI parent `parent` (which must exist) in group `group`.
    pub(crate) fn add_mdev(&self, parent: &str, uuid: &str, group: u32) {
        let dir = self.root.join("devices/pci0000:00").join(parent).join(uuid);
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(self.root.join("mdev_types/nvidia-63")).unwrap();
        symlink(
            self.root.join("mdev_types/nvidia-63"),
            dir.join("mdev_type"),
        )
        .unwrap();
        self.link_driver(&dir, Some("nvidia-vgpu-vfio"));
        self.link_group(&dir, uuid, group);
        symlink(&dir, self.root.join("bus/mdev/devices").join(uuid)).unwrap();
    }

    /// `<root>/bus/pci/devices/<bdf>/`, with the trailing slash users type.
    pub(crate) fn pci_path(&self, bdf: &str) -> PathBuf {
        PathBuf::from(format!("{}/bus/pci/devices/{bdf}/", self.root.display()))
    }
}

impl Drop for FakeSysfs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

const GPU: (u16, u16, u32) = (0x10de, 0x2204, 0x030000);
const GPU_AUDIO: (u16, u16, u32) = (0x10de, 0x1aef, 0x040300);
const ROOT_PORT: (u16, u16, u32) = (0x8086, 0x1901, 0x060400);
const NVME: (u16, u16, u32) = (0x144d, 0xa808, 0x010802);

#[test]
fn pci_path_with_trailing_slash_resolves_through_bus_symlink() {
    let fs = FakeSysfs::new();
    fs.add_pci("0000:01:00.0", GPU, Some("vfio-pci"), Some(12));
    let dev = resolve_device(&fs.pci_path("0000:01:00.0")).unwrap();
    assert_eq!(dev.name, "0000:01:00.0");
    assert_eq!(dev.kind, DeviceKind::Pci);
    assert_eq!(dev.group, 12);
    assert_eq!(dev.driver.as_deref(), Some("vfio-pci"));
    assert_eq!(
        dev.ids,
        Some(PciIds {
            vendor_id: 0x10de,
            device_id: 0x2204,
            class: 0x030000
        })
    );
    assert!(dev.path.ends_with("devices/pci0000:00/0000:01:00.0"));
}

#[test]
fn mdev_path_resolves_with_its_parent() {
    let fs = FakeSysfs::new();
    fs.add_pci("0000:01:00.0", GPU, Some("nvidia"), Some(12));
    let uuid = "c2e088c6-7fd5-4b7d-9d5b-0f8c2b3c0a11";
    fs.add_mdev("0000:01:00.0", uuid, 40);
    let path = fs.root.join("bus/mdev/devices").join(uuid);
    let dev = resolve_device(&path).unwrap();
    assert_eq!(dev.name, uuid);
    assert_eq!(
        dev.kind,
        DeviceKind::Mdev {
            parent: "0000:01:00.0".to_string()
        }
    );
    assert_eq!(dev.group, 40);
    assert_eq!(dev.ids, None);
    // An mdev is bound by its parent's vendor driver, in a group of its own.
    assert!(check_driver(&dev).is_ok());
    assert_eq!(prepare_device(&fs.root, &path).unwrap(), dev);
}

#[test]
fn directory_that_is_not_a_device_is_named_as_such() {
    let fs = FakeSysfs::new();
    let dir = fs.root.join("devices/pci0000:00");
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(fs.root.join("tmp-not-a-device")).unwrap();
    let err = resolve_device(&fs.root.join("tmp-not-a-device"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("a directory that is not a PCI device"),
        "{err}"
    );
    assert!(
        err.contains("expected /sys/bus/pci/devices/DDDD:BB:DD.F"),
        "{err}"
    );
}

#[test]
fn regular_file_is_not_a_device() {
    let fs = FakeSysfs::new();
    let file = fs.root.join("vendor");
    fs::write(&file, "0x10de\n").unwrap();
    let err = resolve_device(&file).unwrap_err().to_string();
    assert!(err.contains("a regular file"), "{err}");
}

#[test]
fn missing_path_is_reported_with_the_path() {
    let fs = FakeSysfs::new();
    let path = fs.pci_path("0000:09:00.0");
    let err = resolve_device(&path).unwrap_err();
    assert!(matches!(err, VfioError::PathMissing { .. }));
    let msg = err.to_string();
    assert!(msg.contains("0000:09:00.0"), "{msg}");
    assert!(msg.contains("no such file or directory"), "{msg}");
}

#[test]
fn bare_bdf_gets_the_sysfs_path_as_a_hint() {
    let err = resolve_device(Path::new("01:00.0"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("give path=/sys/bus/pci/devices/0000:01:00.0/"),
        "{err}"
    );
}

#[test]
fn device_without_iommu_group_says_how_to_turn_the_iommu_on() {
    let fs = FakeSysfs::new();
    fs.add_pci("0000:01:00.0", GPU, Some("vfio-pci"), None);
    let err = resolve_device(&fs.pci_path("0000:01:00.0")).unwrap_err();
    assert!(matches!(err, VfioError::NoIommuGroup { .. }));
    let msg = err.to_string();
    assert!(msg.contains("intel_iommu=on"), "{msg}");
    assert!(msg.contains("amd_iommu=on"), "{msg}");
    assert!(msg.contains("iommu=pt"), "{msg}");
    assert!(msg.contains("noiommu mode is not supported"), "{msg}");
}

#[test]
fn group_members_are_listed_with_driver_and_class() {
    let fs = FakeSysfs::new();
    fs.add_pci("0000:01:00.1", GPU_AUDIO, Some("snd_hda_intel"), Some(12));
    fs.add_pci("0000:01:00.0", GPU, Some("vfio-pci"), Some(12));
    fs.add_pci("0000:02:00.0", NVME, Some("nvme"), Some(13));
    let members = group_members(&fs.root, 12).unwrap();
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["0000:01:00.0", "0000:01:00.1"]);
    assert_eq!(members[1].driver.as_deref(), Some("snd_hda_intel"));
    assert_eq!(members[1].class, Some(0x040300));
    assert_eq!(members[1].vendor_id, Some(0x10de));
    assert_eq!(members[1].describe(), "10de:1aef audio");
    assert_eq!(members[0].header_type, Some(0));
}

#[test]
fn gpu_with_audio_on_host_driver_is_not_viable_and_error_lists_both() {
    let fs = FakeSysfs::new();
    fs.add_pci("0000:01:00.0", GPU, Some("vfio-pci"), Some(12));
    fs.add_pci("0000:01:00.1", GPU_AUDIO, Some("snd_hda_intel"), Some(12));
    let err = prepare_device(&fs.root, &fs.pci_path("0000:01:00.0")).unwrap_err();
    let VfioError::GroupNotViable(report) = &err else {
        panic!("expected GroupNotViable, got {err}");
    };
    assert_eq!(report.group, 12);
    assert_eq!(report.members.len(), 2);
    let msg = err.to_string();
    assert!(
        msg.contains("IOMMU group 12 of 0000:01:00.0 is not viable"),
        "{msg}"
    );
    assert!(
        msg.contains("/sys/kernel/iommu_groups/12/devices/"),
        "{msg}"
    );
    // Every member with its driver, the blocking one marked.
    let audio_line = msg.lines().find(|l| l.contains("0000:01:00.1")).unwrap();
    assert!(audio_line.contains("snd_hda_intel"), "{audio_line}");
    assert!(audio_line.contains("BLOCKS"), "{audio_line}");
    let gpu_line = msg
        .lines()
        .find(|l| l.trim_start().starts_with("0000:01:00.0"))
        .unwrap();
    assert!(
        gpu_line.contains("vfio-pci") && gpu_line.contains("ok"),
        "{gpu_line}"
    );
    // The remedy: bind the audio function to vfio-pci, or pass it too.
    assert!(
        msg.contains("echo 0000:01:00.1 > /sys/bus/pci/devices/0000:01:00.1/driver/unbind"),
        "{msg}"
    );
    assert!(
        msg.contains("echo 0000:01:00.1 > /sys/bus/pci/drivers/vfio-pci/bind"),
        "{msg}"
    );
    assert!(
        msg.contains("--device path=/sys/bus/pci/devices/0000:01:00.1/"),
        "{msg}"
    );
}

#[test]
fn gpu_and_audio_both_on_vfio_pci_are_viable() {
    let fs = FakeSysfs::new();
    fs.add_pci("0000:01:00.0", GPU, Some("vfio-pci"), Some(12));
    fs.add_pci("0000:01:00.1", GPU_AUDIO, Some("vfio-pci"), Some(12));
    let dev = prepare_device(&fs.root, &fs.pci_path("0000:01:00.0")).unwrap();
    assert_eq!(dev.group, 12);
}

#[test]
fn bridge_on_pcieport_in_the_group_keeps_it_viable() {
    let fs = FakeSysfs::new();
    fs.add_pci("0000:00:01.0", ROOT_PORT, Some("pcieport"), Some(2));
    fs.add_pci("0000:01:00.0", GPU, Some("vfio-pci"), Some(2));
    assert!(prepare_device(&fs.root, &fs.pci_path("0000:01:00.0")).is_ok());
    let members = group_members(&fs.root, 2).unwrap();
    assert_eq!(members[0].status(), MemberStatus::Bridge);
    assert!(members[0].is_bridge());
}

#[test]
fn bridge_is_recognised_by_class_without_config() {
    let m = GroupMember {
        name: "0000:00:1c.0".to_string(),
        driver: Some("shpchp".to_string()),
        vendor_id: None,
        device_id: None,
        class: Some(0x060400),
        header_type: None,
    };
    assert_eq!(m.status(), MemberStatus::Bridge);
}

#[test]
fn unbound_sibling_keeps_the_group_viable() {
    let fs = FakeSysfs::new();
    fs.add_pci("0000:01:00.0", GPU, Some("vfio-pci"), Some(12));
    fs.add_pci("0000:01:00.1", GPU_AUDIO, None, Some(12));
    assert!(prepare_device(&fs.root, &fs.pci_path("0000:01:00.0")).is_ok());
}

#[test]
fn vfio_variant_driver_counts_as_vfio() {
    assert!(is_vfio_driver("vfio-pci"));
    assert!(is_vfio_driver("mlx5_vfio_pci"));
    assert!(!is_vfio_driver("nvidia"));
}

#[test]
fn device_on_nvme_driver_names_the_driver_and_the_bind_commands() {
    let fs = FakeSysfs::new();
    fs.add_pci("0000:03:00.0", NVME, Some("nvme"), Some(3));
    let err = prepare_device(&fs.root, &fs.pci_path("0000:03:00.0")).unwrap_err();
    assert!(matches!(err, VfioError::WrongDriver { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("0000:03:00.0 is bound to the host driver nvme"),
        "{msg}"
    );
    assert!(
        msg.contains("echo 0000:03:00.0 > /sys/bus/pci/devices/0000:03:00.0/driver/unbind"),
        "{msg}"
    );
    assert!(
        msg.contains("echo vfio-pci > /sys/bus/pci/devices/0000:03:00.0/driver_override"),
        "{msg}"
    );
    assert!(
        msg.contains("echo 0000:03:00.0 > /sys/bus/pci/drivers/vfio-pci/bind"),
        "{msg}"
    );
}

#[test]
fn unbound_device_gets_the_bind_commands_without_unbind() {
    let fs = FakeSysfs::new();
    fs.add_pci("0000:03:00.0", NVME, None, Some(3));
    let err = prepare_device(&fs.root, &fs.pci_path("0000:03:00.0")).unwrap_err();
    assert!(matches!(err, VfioError::Unbound { .. }));
    let msg = err.to_string();
    assert!(msg.contains("not bound to any driver"), "{msg}");
    assert!(msg.contains("driver_override"), "{msg}");
    assert!(!msg.contains("unbind"), "{msg}");
}

#[test]
fn bdf_shapes_are_recognised() {
    assert!(looks_like_bdf("0000:01:00.0"));
    assert!(looks_like_bdf("01:00.7"));
    assert!(!looks_like_bdf("01:00.8"));
    assert!(!looks_like_bdf("/sys/bus/pci/devices"));
}
