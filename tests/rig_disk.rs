//! Disk tests in the nested rig (see `docs/rig.md`, "Disk tests", and `docs/cloud-images.md`).
//! L1 QEMU gives the rig host (L2) virtio disks backed by files on this machine; L2 sees them as
//! `/dev/vda`, `/dev/vdb`, …, and viaduct uses those block devices as raw disks with
//! `--disk path=/dev/vdX`. The guest (L3) finds viaduct's disks as `/dev/vda`, … in `--disk`
//! order, and the tests check what it reported and, after the run, the backing files.
//!
//! - The cloud-image test boots the rig's Debian 12 cloud image (systemd + cloud-init, built by
//!   `resources/cloud-image/build.sh`) from its disk with a NoCloud seed disk, the way users'
//!   integration suites do.
//! - The block I/O test uses the busybox guest (much faster) and its `disk-io` step.
//!
//! A `--disk` path that does not exist is refused by the CLI before any KVM work, so it is
//! tested in `tests/cli.rs`, not here.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;

use common::{
    cloud_cmdline, cloud_image, cloud_seed, marker_token, rig_disk_check, viaduct_command,
    viaduct_command_with_timeout, CloudUserData, HostDiskMode, RigHost, RigRun, CLOUD_INITRD_IN_L2,
    CLOUD_KERNEL_IN_L2, RIG_TIMEOUT_SECS, VIADUCT_TIMED_OUT,
};

/// Memory of the cloud guest: systemd and cloud-init (Python) want more than the busybox guest.
const CLOUD_GUEST_MIB: u64 = 1024;

/// How long viaduct may run the cloud guest. Under QEMU in the rig host the image boots,
/// runs cloud-init and powers off in about 150 s (docs/cloud-images.md); the usual 240 s bound
/// would leave too little room. It stays inside the rig's own timeout.
const CLOUD_VIADUCT_TIMEOUT_SECS: u64 = 540;
const _: () = assert!(CLOUD_VIADUCT_TIMEOUT_SECS + 40 < RIG_TIMEOUT_SECS);

/// Size of the blank and read-only disks of the block I/O test.
const SMALL_DISK_BYTES: u64 = 16 << 20;

/// viaduct's exit status, not the timeout's; with the log in the message.
fn assert_viaduct_exit_zero(run: &RigRun) {
    let context = run.context();
    let status = run
        .viaduct_exit()
        .unwrap_or_else(|| panic!("no VIADUCT-EXIT line\n{context}"));
    assert_ne!(
        status, VIADUCT_TIMED_OUT,
        "viaduct was killed by the timeout (the guest hung or did not power off)\n{context}"
    );
    assert_eq!(status, 0, "viaduct's exit status\n{context}");
}

#[test]
fn cloud_image_boots_with_cloud_init_and_powers_off() {
    let test = "cloud_image_boots_with_cloud_init_and_powers_off";
    let image = cloud_image();
    let mut host = RigHost::new(test);
    let user_data = CloudUserData {
        marker: marker_token(),
        file_token: marker_token(),
        ..Default::default()
    };
    let seed = cloud_seed(host.dir(), &user_data);
    // The image is shared by every run: L1 keeps the guest's writes in a throw-away overlay.
    let root = host.virtio_disk("cloud-root", &image.disk, HostDiskMode::Snapshot);
    let seed = host.virtio_disk("cloud-seed", &seed, HostDiskMode::ReadOnly);
    let scenario = rig_disk_check(&[&root, &seed])
        + &viaduct_command_with_timeout(
            &format!(
                "--kernel {CLOUD_KERNEL_IN_L2} --initramfs {CLOUD_INITRD_IN_L2} \
             --cmdline \"{}\" --cpus boot=1 --memory size={CLOUD_GUEST_MIB}M \
             --serial tty --console off --disk path={} --disk path={},readonly=on",
                cloud_cmdline(),
                root.dev(),
                seed.dev()
            ),
            CLOUD_VIADUCT_TIMEOUT_SECS,
        );
    let run = host.run_with_files(&scenario, &image.files_for_l2());
    let context = run.context();

    // cloud-init found the seed disk and ran the user-data: runcmd printed the marker, and the
    // file write_files wrote is there.
    assert_eq!(
        run.guest("CLOUD-MARKER"),
        Some(user_data.marker.as_str()),
        "cloud-init's runcmd did not print the marker (did the guest boot from the disk and \
         find the cidata seed?)\n{context}"
    );
    assert_eq!(
        run.guest("CLOUD-FILE"),
        Some(user_data.file_token.as_str()),
        "the file written by cloud-init's write_files\n{context}"
    );
    // The root filesystem is the image's first partition, on viaduct's first disk.
    assert_eq!(run.guest("ROOT"), Some("/dev/vda1"), "{context}");
    // systemd finished booting: every unit started (running), or some failed (degraded).
    let state = run.guest("SYSTEMD-STATE");
    assert_eq!(
        state,
        Some("running"),
        "systemd did not reach its target cleanly (failed units: {:?})\n{context}",
        run.guest("SYSTEMD-FAILED")
    );
    assert_eq!(
        run.guest("CLOUD-INIT-STATUS"),
        Some("done"),
        "cloud-init status\n{context}"
    );
    assert_eq!(
        run.guest("CLOUD-ERRORS"),
        Some("0"),
        "cloud-init errors\n{context}"
    );
    // cloud-init's power_state powered the guest off (ACPI S5), and viaduct exited 0.
    assert!(
        run.guest("POWEROFF").is_some(),
        "the guest did not get to power_state\n{context}"
    );
    assert_viaduct_exit_zero(&run);
    assert!(
        run.position("GUEST-POWEROFF") < run.position("VIADUCT-EXIT"),
        "{context}"
    );
}

#[test]
fn guest_writes_reach_a_blank_disk_and_readonly_disk_rejects_writes() {
    let test = "guest_writes_reach_a_blank_disk_and_readonly_disk_rejects_writes";
    let mut host = RigHost::new(test);
    let (marker, write, ro_marker) = (marker_token(), marker_token(), marker_token());
    // Both are read-write for L2: only viaduct's readonly=on can keep the guest from writing.
    let blank = host.new_virtio_disk("blank", SMALL_DISK_BYTES, "", HostDiskMode::ReadWrite);
    let ro = host.new_virtio_disk("ro", SMALL_DISK_BYTES, &ro_marker, HostDiskMode::ReadWrite);
    let ro_before = ro.read(0, 4096);
    let cmdline = format!(
        "console=ttyS0 quiet viaduct_marker={marker} viaduct_action=disk-io \
         viaduct_disk_rw=vda viaduct_disk_ro=vdb viaduct_write={write}"
    );
    let scenario = rig_disk_check(&[&blank, &ro])
        + &viaduct_command(&format!(
            "--kernel /guest/bzImage --initramfs /guest/initramfs.cpio.gz \
             --cmdline \"{cmdline}\" --cpus boot=1 --memory size=512M --serial tty \
             --console off --disk path={} --disk path={},readonly=on",
            blank.dev(),
            ro.dev()
        ));
    let run = host.run_with_files(&scenario, &[]);
    let context = run.context();
    assert_eq!(
        run.guest_marker(),
        Some(marker.as_str()),
        "guest marker (did the guest boot?)\n{context}"
    );

    // The guest saw both disks, in --disk order, with their sizes; only the second read-only.
    let sectors = SMALL_DISK_BYTES / 512;
    let blk = run.values("GUEST-BLK");
    assert!(
        blk.iter()
            .any(|v| v.starts_with(&format!("vda,{sectors},0,"))),
        "the guest's vda is not the {sectors}-sector read-write disk: {blk:?}\n{context}"
    );
    assert!(
        blk.iter()
            .any(|v| v.starts_with(&format!("vdb,{sectors},"))),
        "the guest's vdb is not the {sectors}-sector disk: {blk:?}\n{context}"
    );

    // Writes reached the blank disk's file on this machine, at both ends.
    let errors = run.values("GUEST-ERROR");
    assert!(errors.is_empty(), "guest errors: {errors:?}\n{context}");
    assert_eq!(
        run.guest("DISK-WROTE"),
        Some(format!("vda,{write}").as_str()),
        "{context}"
    );
    assert_eq!(
        blank.token_at(0),
        write,
        "sector 0 of {}\n{context}",
        blank.image.display()
    );
    assert_eq!(
        blank.token_at(blank.sectors() - 1),
        write,
        "the last sector of {}\n{context}",
        blank.image.display()
    );

    // The read-only disk: readable, announced read-only or at least refusing the write, and
    // its file unchanged.
    assert_eq!(
        run.guest("DISK-RO-MARKER"),
        Some(format!("vdb,{ro_marker}").as_str()),
        "the guest could not read the read-only disk\n{context}"
    );
    assert_eq!(
        run.guest("DISK-RO-WRITE"),
        Some("vdb,refused"),
        "a write to the readonly=on disk succeeded in the guest\n{context}"
    );
    assert_eq!(
        run.guest("DISK-RO-FLAG"),
        Some("vdb,1"),
        "the guest's vdb is not read-only (VIRTIO_BLK_F_RO)\n{context}"
    );
    assert_eq!(
        run.guest("DISK-RO-AFTER"),
        Some(format!("vdb,{ro_marker}").as_str()),
        "{context}"
    );
    assert!(
        ro.read(0, 4096) == ro_before,
        "the read-only disk's file {} changed\n{context}",
        ro.image.display()
    );
    assert_viaduct_exit_zero(&run);
}
