//! qcow2 disks in the nested rig (see `docs/rig.md` and `docs/cloud-images.md`): the rig's
//! Debian cloud image converted to qcow2 boots from a disk given with no `image_type`, next to
//! a second disk that is a qcow2 overlay on a qcow2 backing file; the guest writes to both.
//! After the run `qemu-img` on this machine checks every image, finds the guest's write in the
//! overlay and none in the backing file, and finds the root image's qcow2 header intact and
//! holding the file cloud-init wrote (a qcow2 file served as raw would be corrupted by the
//! first guest write, and the guest would not even find its partitions).
//!
//! The same boot is the cloud image as users get it in every other respect too: its console is
//! hvc0 (`--console tty --serial off`, the kernel's `console=hvc0`), so every `GUEST-` line and
//! the login prompt reach the log only through the virtio console; a NIC on a tap viaduct
//! creates (`--net tap=…,ip=169.254.10.1,…`) is configured by the seed's NoCloud
//! network-config, and the guest and the rig host each fetch a file from the other over HTTP;
//! and the kernel's hardware RNG is virtio-rng.
//!
//! L1 QEMU gives each image file to the rig host as a raw virtio disk, so viaduct sees qcow2
//! bytes on `/dev/vdX` in L2, where a qcow2 file cannot grow: the images get free room at
//! their end first (clusters nobody references, which qcow2 allocates from).

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{
    cloud_cmdline, cloud_image, cloud_seed, marker_token, rig_disk_check,
    viaduct_command_with_timeout, CloudNet, CloudUserData, HostDiskMode, RigHost, RigRun,
    CLOUD_INITRD_IN_L2, CLOUD_KERNEL_IN_L2, RIG_TIMEOUT_SECS, VIADUCT_TIMED_OUT,
};

/// The guest NIC's MAC.
const GUEST_MAC: &str = "52:54:00:0a:00:02";

/// Rig-host lines run before viaduct: an HTTP server on port 8080 serving `host.txt`, and a
/// background job that fetches `guest.txt` from the guest once it answers
/// (`RIG-NET-FROM-GUEST=`), then serves `done.txt` so the guest may power off.
fn rig_host_http(host_token: &str, guest_ip: &str) -> String {
    format!(
        "mkdir -p /tmp/hostwww\n\
         echo host-{host_token} >/tmp/hostwww/host.txt\n\
         httpd -p 8080 -h /tmp/hostwww || echo RIG-NOTE: httpd did not start\n\
         (\n\
           got=\n\
           for i in $(seq 1 300); do\n\
             got=$(timeout 5 wget -q -O - http://{guest_ip}:8080/guest.txt 2>/dev/null) && [ -n \"$got\" ] && break\n\
             sleep 1\n\
           done\n\
           echo \"RIG-NET-FROM-GUEST=$got\"\n\
           echo done >/tmp/hostwww/done.txt\n\
         ) &\n"
    )
}

/// Memory of the cloud guest (as in tests/rig_disk.rs).
const CLOUD_GUEST_MIB: u64 = 1024;
/// How long viaduct may run the cloud guest (as in tests/rig_disk.rs).
const CLOUD_VIADUCT_TIMEOUT_SECS: u64 = 540;
const _: () = assert!(CLOUD_VIADUCT_TIMEOUT_SECS + 40 < RIG_TIMEOUT_SECS);
/// Virtual size of the overlay's backing image.
const BASE_BYTES: usize = 16 << 20;
/// Room added at the end of each qcow2 file for the clusters the guest's writes allocate.
const ROOM_BYTES: u64 = 256 << 20;

/// Runs `qemu-img args…` and returns its stdout; panics with its stderr if it fails.
fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run qemu-img ({e}): install qemu-utils (resources/rig/fetch.sh does)")
        });
    assert!(
        out.status.success(),
        "qemu-img {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Grows `file` by [`ROOM_BYTES`] of unreferenced (free) space.
fn add_room(file: &Path) {
    let f = fs::OpenOptions::new().write(true).open(file).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len + ROOM_BYTES).unwrap();
}

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

/// Whether `needle` occurs in the file at `path` (read in pieces; the image is hundreds of MiB).
fn file_contains(path: &Path, needle: &[u8]) -> bool {
    use std::io::Read;
    let mut f = fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 8 << 20];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return false;
        }
        carry.extend_from_slice(&buf[..n]);
        if carry.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        let keep = carry.len().min(needle.len());
        carry.drain(..carry.len() - keep);
    }
}

#[test]
fn cloud_image_boots_from_qcow2_on_hvc0_with_a_nic_and_an_overlay_keeps_the_guest_writes() {
    let test =
        "cloud_image_boots_from_qcow2_on_hvc0_with_a_nic_and_an_overlay_keeps_the_guest_writes";
    let image = cloud_image();
    let mut host = RigHost::new(test);
    let dir = host.dir().to_path_buf();

    // The root disk: the cloud image as qcow2, given to viaduct with no image_type.
    let root = dir.join("root.qcow2");
    qemu_img(&["convert", "-O", "qcow2", path(&image.disk), path(&root)]);
    add_room(&root);
    // The overlay's backing file: random bytes as qcow2, and the overlay naming it by the
    // path it has in L2 (/dev/vdc, the third rig disk).
    let base_raw = dir.join("base.raw");
    let base_data: Vec<u8> = (0..BASE_BYTES)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(&base_raw, &base_data).unwrap();
    let base = dir.join("base.qcow2");
    qemu_img(&["convert", "-O", "qcow2", path(&base_raw), path(&base)]);
    let overlay = dir.join("overlay.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "/dev/vdc",
        "-F",
        "qcow2",
        path(&overlay),
        &BASE_BYTES.to_string(),
    ]);
    add_room(&overlay);
    let base_before = fs::read(&base).unwrap();

    let net = CloudNet {
        mac: GUEST_MAC.into(),
        guest_cidr: "169.254.10.2/16".into(),
        host_ip: "169.254.10.1".into(),
        token: marker_token(),
    };
    let host_token = marker_token();
    let user_data = CloudUserData {
        marker: marker_token(),
        file_token: marker_token(),
        // The guest's third disk is the overlay: it writes the marker to its first sector.
        blank: Some("vdc".into()),
        console: Some("hvc0".into()),
        net: Some(net.clone()),
        ..Default::default()
    };
    let seed = cloud_seed(&dir, &user_data);
    let root_disk = host.virtio_disk("qcow2-root", &root, HostDiskMode::ReadWrite);
    let seed_disk = host.virtio_disk("cloud-seed", &seed, HostDiskMode::ReadOnly);
    let base_disk = host.virtio_disk("qcow2-base", &base, HostDiskMode::ReadOnly);
    let overlay_disk = host.virtio_disk("qcow2-overlay", &overlay, HostDiskMode::ReadWrite);
    assert_eq!(
        base_disk.dev(),
        "/dev/vdc",
        "the overlay names its backing file so"
    );
    let scenario = rig_disk_check(&[&root_disk, &seed_disk, &base_disk, &overlay_disk])
        + &rig_host_http(&host_token, net.guest_ip())
        + &viaduct_command_with_timeout(
            &format!(
                "--kernel {CLOUD_KERNEL_IN_L2} --initramfs {CLOUD_INITRD_IN_L2} \
                 --cmdline \"{}\" --cpus boot=1 --memory size={CLOUD_GUEST_MIB}M \
                 --console tty --serial off --disk path={} --disk path={},readonly=on \
                 --disk path={},image_type=qcow2,backing_files=on \
                 --net tap=vtap0,ip={},mask=255.255.0.0,mac={GUEST_MAC}",
                cloud_cmdline().replace("console=ttyS0", "console=hvc0"),
                root_disk.dev(),
                seed_disk.dev(),
                overlay_disk.dev(),
                net.host_ip
            ),
            CLOUD_VIADUCT_TIMEOUT_SECS,
        );
    let run = host.run_with_files(&scenario, &image.files_for_l2());
    let context = run.context();

    // The guest booted from the qcow2 root (its partitions were there), ran cloud-init, wrote
    // to the overlay and read the write back, and powered off.
    assert_eq!(
        run.guest("CLOUD-MARKER"),
        Some(user_data.marker.as_str()),
        "cloud-init's runcmd did not print the marker (did the guest boot from the qcow2 \
         root?)\n{context}"
    );
    assert_eq!(run.guest("ROOT"), Some("/dev/vda1"), "{context}");
    assert_eq!(
        run.guest("CLOUD-FILE"),
        Some(user_data.file_token.as_str()),
        "{context}"
    );
    assert_eq!(
        run.guest("DISK-WROTE"),
        Some(format!("vdc,{}", user_data.marker).as_str()),
        "the guest's write to the overlay, read back through viaduct\n{context}"
    );
    assert_eq!(run.guest("SYSTEMD-STATE"), Some("running"), "{context}");
    assert_eq!(run.guest("CLOUD-ERRORS"), Some("0"), "{context}");
    assert_viaduct_exit_zero(&run);

    // The console: with no UART every GUEST- line above came through hvc0, and so did
    // systemd's login prompt (a getty on the kernel's console=hvc0).
    assert!(
        run.console_printed("viaduct-cloud login:"),
        "no login prompt on hvc0\n{context}"
    );
    // The NIC: network-config gave it its address, and HTTP went both ways.
    let nic = format!("{GUEST_MAC},virtio_net,{}", net.guest_cidr);
    assert!(
        run.values("GUEST-NET-IF").iter().any(|v| v.ends_with(&nic)),
        "the guest's NIC (wanted …,{nic}): {:?}\n{context}",
        run.values("GUEST-NET-IF")
    );
    assert_eq!(
        run.guest("NET-FROM-HOST"),
        Some(format!("host-{host_token}").as_str()),
        "the guest did not read the rig host's file\n{context}"
    );
    assert_eq!(
        run.value("RIG-NET-FROM-GUEST"),
        Some(format!("guest-{}", net.token).as_str()),
        "the rig host did not read the guest's file\n{context}"
    );
    assert_eq!(run.guest("NET-HOST-DONE"), Some("1"), "{context}");
    // Entropy: the kernel uses virtio-rng, and /dev/hwrng gives data.
    assert_eq!(run.guest("RNG"), Some("virtio_rng.0"), "{context}");
    let hwrng = run.guest("HWRNG-BYTES").unwrap_or("");
    assert!(
        hwrng.len() == 64 && hwrng.chars().any(|c| c != '0'),
        "32 bytes from /dev/hwrng, as hex: {hwrng:?}\n{context}"
    );

    // The root image: still qcow2 (header intact), consistent, and holding the file that
    // write_files wrote (the guest's writes went through qcow2, not over the header).
    let head = fs::read(&root).unwrap()[..4].to_vec();
    assert_eq!(
        head, b"QFI\xfb",
        "the root image's qcow2 magic was overwritten"
    );
    qemu_img(&["check", path(&root)]);
    let root_raw = dir.join("root-after.raw");
    qemu_img(&["convert", "-O", "raw", path(&root), path(&root_raw)]);
    assert!(
        file_contains(&root_raw, user_data.file_token.as_bytes()),
        "the file cloud-init wrote is not in the root image"
    );
    let _ = fs::remove_file(&root_raw);

    // The backing file is untouched; the overlay holds the write and reads the rest from it.
    assert!(
        fs::read(&base).unwrap() == base_before,
        "the backing file changed"
    );
    qemu_img(&["check", path(&base)]);
    // Point the overlay at the backing file's path on this machine (header only), then read it.
    qemu_img(&[
        "rebase",
        "-u",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        path(&overlay),
    ]);
    qemu_img(&["check", path(&overlay)]);
    let overlay_raw = dir.join("overlay-after.raw");
    qemu_img(&["convert", "-O", "raw", path(&overlay), path(&overlay_raw)]);
    let seen = fs::read(&overlay_raw).unwrap();
    assert!(
        seen.starts_with(user_data.marker.as_bytes()),
        "the overlay's first sector does not hold the guest's write"
    );
    assert!(
        seen[512..] == base_data[512..],
        "the overlay does not read the backing file's data beyond the written sector"
    );
    let map = qemu_img(&["map", "--output=json", path(&overlay)]);
    assert!(
        map.contains("\"depth\": 0") && map.contains("\"depth\": 1"),
        "the overlay should hold some clusters itself and take the rest from its backing \
         file:\n{map}"
    );
}
