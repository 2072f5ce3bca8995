use std::io;

use vmm_sys_util::errno::Error as SysError;

use super::*;
use crate::sysfs::tests::FakeSysfs;

fn gpu() -> HostDevice {
    HostDevice {
        path: PathBuf::from("/sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0"),
        name: "0000:01:00.0".to_string(),
        kind: DeviceKind::Pci,
        group: 12,
        driver: Some("vfio-pci".to_string()),
        ids: None,
    }
}

fn open_group_err(errno: i32) -> vfio_ioctls::VfioError {
    vfio_ioctls::VfioError::OpenGroup(io::Error::from_raw_os_error(errno), "12".to_string())
}

#[test]
fn group_permission_denied_names_the_file_the_group_and_the_remedy() {
    let msg = map_open_error(
        Path::new("/nonexistent"),
        &gpu(),
        open_group_err(libc::EACCES),
    )
    .to_string();
    assert_eq!(
        msg,
        "permission denied opening /dev/vfio/12 (IOMMU group 12 of 0000:01:00.0): run as root \
         or give your user access to /dev/vfio/12 (e.g. `chown $USER /dev/vfio/12`, or a udev \
         rule)"
    );
}

#[test]
fn busy_group_is_reported_as_in_use_by_another_process() {
    let err = map_open_error(
        Path::new("/nonexistent"),
        &gpu(),
        open_group_err(libc::EBUSY),
    );
    assert!(matches!(err, VfioError::GroupBusy { group: 12, .. }));
    let msg = err.to_string();
    assert!(msg.contains("group 12 of 0000:01:00.0 is in use by another process (another VM?)"));
    assert!(!msg.contains("os error"), "{msg}");
}

#[test]
fn missing_group_file_points_at_the_driver() {
    let msg = map_open_error(
        Path::new("/nonexistent"),
        &gpu(),
        open_group_err(libc::ENOENT),
    )
    .to_string();
    assert!(
        msg.contains("cannot open 0000:01:00.0 (IOMMU group 12)"),
        "{msg}"
    );
    assert!(msg.contains("not bound to vfio-pci"), "{msg}");
}

#[test]
fn kernel_refusing_the_group_lists_its_members() {
    let fs = FakeSysfs::new();
    fs.add_pci(
        "0000:01:00.0",
        (0x10de, 0x2204, 0x030000),
        Some("vfio-pci"),
        Some(12),
    );
    fs.add_pci(
        "0000:01:00.1",
        (0x10de, 0x1aef, 0x040300),
        Some("snd_hda_intel"),
        Some(12),
    );
    let err = map_open_error(&fs.root, &gpu(), vfio_ioctls::VfioError::GroupViable);
    let VfioError::GroupNotViable(report) = &err else {
        panic!("expected GroupNotViable, got {err}");
    };
    assert!(report.kernel_refused);
    assert_eq!(report.members.len(), 2);
    let msg = err.to_string();
    assert!(
        msg.contains("VFIO_GROUP_GET_STATUS on /dev/vfio/12"),
        "{msg}"
    );
    assert!(msg.contains("snd_hda_intel"), "{msg}");
}

#[test]
fn missing_interrupt_remapping_suggests_the_module_parameter() {
    let e = vfio_ioctls::VfioError::ContainerSetIOMMU(SysError::new(libc::EPERM));
    let msg = map_open_error(Path::new("/nonexistent"), &gpu(), e).to_string();
    assert!(msg.contains("no interrupt remapping"), "{msg}");
    assert!(msg.contains("allow_unsafe_interrupts=1"), "{msg}");
}

#[test]
fn busy_device_fd_is_explained_without_an_errno_chain() {
    let e = vfio_ioctls::VfioError::GroupGetDeviceFD(SysError::new(libc::EBUSY));
    let msg = map_open_error(Path::new("/nonexistent"), &gpu(), e).to_string();
    assert_eq!(
        msg,
        "cannot open 0000:01:00.0 (IOMMU group 12) through VFIO: getting the device from \
         /dev/vfio/12 (VFIO_GROUP_GET_DEVICE_FD): the device is busy: it is already open \
         (another VM?)"
    );
}

#[test]
fn missing_container_means_the_modules_are_not_loaded() {
    let e = io::Error::from(io::ErrorKind::NotFound);
    let msg = container_open_error(&e).to_string();
    assert!(msg.contains("modprobe vfio-pci"), "{msg}");
}

#[test]
fn container_permission_denied_names_the_file() {
    let e = io::Error::from_raw_os_error(libc::EACCES);
    let msg = container_open_error(&e).to_string();
    assert!(
        msg.starts_with("permission denied opening /dev/vfio/vfio"),
        "{msg}"
    );
    assert!(msg.contains("permissions"), "{msg}");
}

#[test]
fn a_device_being_opened_on_another_thread_cannot_be_opened_again() {
    let mut opened = Opened::<u8>::default();
    assert!(opened.start("0000:01:00.0"));
    // A second thread given the same device while the first is still in the kernel's reset.
    assert!(!opened.start("0000:01:00.0"));
    // Another device opens beside it.
    assert!(opened.start("0000:02:00.0"));
    let device = Arc::new(0u8);
    opened.end("0000:01:00.0", Some(&device));
    assert!(!opened.start("0000:01:00.0"), "open now");
    assert!(opened.any_open());
}

#[test]
fn a_device_whose_open_failed_or_that_was_closed_can_be_opened_again() {
    let mut opened = Opened::<u8>::default();
    assert!(opened.start("0000:01:00.0"));
    opened.end("0000:01:00.0", None);
    assert!(!opened.any_open());
    assert!(
        opened.start("0000:01:00.0"),
        "its open failed, so it is not open"
    );
    let device = Arc::new(0u8);
    opened.end("0000:01:00.0", Some(&device));
    drop(device);
    assert!(!opened.any_open());
    assert!(opened.start("0000:01:00.0"), "closed since");
}
