//! End-to-end tests of the `viaduct` binary's command line: every bad value must end in one clear
//! error line naming the flag and the value, a non-zero exit and no panic; good command lines must
//! get past parsing to `vmm::run`.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A scratch directory holding a dummy kernel, removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "viaduct-cli-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("vmlinux"), b"not really a kernel").unwrap();
        fs::write(dir.join("initramfs"), b"not really an initramfs").unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn kernel(&self) -> String {
        self.path("vmlinux").display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn viaduct<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_viaduct"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run viaduct")
}

/// Runs viaduct with a valid dummy kernel plus `args`.
fn with_kernel(scratch: &Scratch, args: &[&str]) -> Output {
    let kernel = scratch.kernel();
    viaduct(["--kernel", kernel.as_str()].iter().chain(args))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Checks a rejected command line: non-zero exit, one `viaduct: error:` line naming `flag` and
/// `value`, no panic or backtrace.
fn assert_rejected(output: &Output, flag: &str, value: &str) -> String {
    let err = stderr(output);
    assert!(!output.status.success(), "expected failure, stderr: {err}");
    assert_eq!(
        output.status.code(),
        Some(2),
        "usage exit code, stderr: {err}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(!err.contains("RUST_BACKTRACE"), "backtrace hint: {err}");
    assert!(!err.contains("stack backtrace"), "backtrace: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("viaduct: error: "), "{err}");
    assert!(err.contains(flag), "flag {flag} not named: {err}");
    assert!(err.contains(value), "value {value} not named: {err}");
    err
}

#[test]
fn memory_size_zero() {
    let s = Scratch::new();
    let err = assert_rejected(
        &with_kernel(&s, &["--memory", "size=0"]),
        "--memory",
        "size=0",
    );
    assert!(err.contains("at least 16 MiB"), "{err}");
}

#[test]
fn memory_size_not_a_number() {
    let s = Scratch::new();
    assert_rejected(
        &with_kernel(&s, &["--memory", "size=abc"]),
        "--memory",
        "size=abc",
    );
}

#[test]
fn memory_size_overflow_and_alignment() {
    let s = Scratch::new();
    assert_rejected(
        &with_kernel(&s, &["--memory", "size=99999999999G"]),
        "--memory",
        "size=99999999999G",
    );
    let err = assert_rejected(
        &with_kernel(&s, &["--memory", "size=16777217"]),
        "--memory",
        "size=16777217",
    );
    assert!(err.contains("multiple of 4 KiB"), "{err}");
}

#[test]
fn cpus_zero() {
    let s = Scratch::new();
    assert_rejected(&with_kernel(&s, &["--cpus", "boot=0"]), "--cpus", "boot=0");
}

#[test]
fn cpus_too_many() {
    let s = Scratch::new();
    let err = assert_rejected(
        &with_kernel(&s, &["--cpus", "boot=255"]),
        "--cpus",
        "boot=255",
    );
    assert!(err.contains("254"), "{err}");
}

#[test]
fn cpus_unknown_key() {
    let s = Scratch::new();
    let err = assert_rejected(
        &with_kernel(&s, &["--cpus", "boot=2,foo=1"]),
        "--cpus",
        "boot=2,foo=1",
    );
    assert!(err.contains("\"foo\""), "names the key: {err}");
    assert!(
        err.contains("supported keys: boot"),
        "lists the keys: {err}"
    );
}

#[test]
fn cpus_unsupported_cloud_hypervisor_key() {
    let s = Scratch::new();
    let err = assert_rejected(
        &with_kernel(&s, &["--cpus", "boot=2,max=4"]),
        "--cpus",
        "boot=2,max=4",
    );
    assert!(err.contains("\"max\""), "{err}");
}

#[test]
fn platform_segment_count_out_of_range() {
    let s = Scratch::new();
    for value in ["num_pci_segments=0", "num_pci_segments=97"] {
        let err = assert_rejected(
            &with_kernel(&s, &["--platform", value]),
            "--platform",
            value,
        );
        assert!(err.contains("between 1 and 96"), "states the bound: {err}");
    }
}

#[test]
fn platform_segment_count_not_a_number() {
    let s = Scratch::new();
    let err = assert_rejected(
        &with_kernel(&s, &["--platform", "num_pci_segments=abc"]),
        "--platform",
        "num_pci_segments=abc",
    );
    assert!(err.contains("not a valid integer"), "{err}");
}

#[test]
fn platform_unknown_and_unsupported_keys() {
    let s = Scratch::new();
    let err = assert_rejected(
        &with_kernel(&s, &["--platform", "foo=1"]),
        "--platform",
        "foo=1",
    );
    assert!(err.contains("unknown key \"foo\""), "{err}");
    assert!(err.contains("supported keys: num_pci_segments"), "{err}");
    let err = assert_rejected(
        &with_kernel(&s, &["--platform", "num_pci_segments=2,iommufd=on"]),
        "--platform",
        "num_pci_segments=2,iommufd=on",
    );
    assert!(
        err.contains("\"iommufd\" is a cloud-hypervisor option"),
        "{err}"
    );
    let err = assert_rejected(
        &with_kernel(&s, &["--platform", "vfio_p2p_dma=maybe"]),
        "--platform",
        "vfio_p2p_dma=maybe",
    );
    assert!(err.contains("vfio_p2p_dma"), "{err}");
    assert_reaches_vmm(&with_kernel(
        &s,
        &["--platform", "num_pci_segments=2,vfio_p2p_dma=off"],
    ));
}

#[test]
fn clique_without_peer_to_peer_is_refused() {
    let s = Scratch::new();
    let dev = s.device_dir("0000:01:00.0");
    let value = format!("path={dev},x_nv_gpudirect_clique=0");
    let err = assert_rejected(
        &with_kernel(&s, &["--platform", "vfio_p2p_dma=off", "--device", &value]),
        "--device",
        &value,
    );
    assert!(
        err.contains("x_nv_gpudirect_clique tells the guest driver")
            && err.contains("vfio_p2p_dma=off")
            && err.contains("remove one of the two"),
        "{err}"
    );
    // The same device without the clique, or with P2P on, gets through the checks.
    assert_reaches_vmm_with_devices(&with_kernel(
        &s,
        &["--platform", "vfio_p2p_dma=on", "--device", &value],
    ));
}

#[test]
fn pci_segment_zero_weight() {
    let s = Scratch::new();
    let err = assert_rejected(
        &with_kernel(
            &s,
            &["--pci-segment", "pci_segment=0,mmio32_aperture_weight=0"],
        ),
        "--pci-segment",
        "pci_segment=0,mmio32_aperture_weight=0",
    );
    assert!(err.contains("at least 1"), "{err}");
}

#[test]
fn pci_segment_weight_not_a_number() {
    let s = Scratch::new();
    assert_rejected(
        &with_kernel(&s, &["--pci-segment", "mmio64_aperture_weight=x"]),
        "--pci-segment",
        "mmio64_aperture_weight=x",
    );
}

#[test]
fn pci_segment_beyond_num_pci_segments() {
    let s = Scratch::new();
    // --pci-segment before --platform: checked after both are parsed.
    let err = assert_rejected(
        &with_kernel(
            &s,
            &[
                "--pci-segment",
                "pci_segment=2",
                "--platform",
                "num_pci_segments=2",
            ],
        ),
        "--pci-segment",
        "pci_segment=2",
    );
    assert!(err.contains("2 PCI segments"), "says the count: {err}");
    assert!(
        err.contains("--platform num_pci_segments=3"),
        "suggests the fix: {err}"
    );
}

#[test]
fn pci_segment_given_twice() {
    let s = Scratch::new();
    let err = assert_rejected(
        &with_kernel(
            &s,
            &[
                "--platform",
                "num_pci_segments=2",
                "--pci-segment",
                "pci_segment=1",
                "--pci-segment",
                "pci_segment=1",
            ],
        ),
        "--pci-segment",
        "pci_segment=1",
    );
    assert!(err.contains("already configured"), "{err}");
    // The same through several values after one flag.
    let err = assert_rejected(
        &with_kernel(
            &s,
            &[
                "--platform",
                "num_pci_segments=2",
                "--pci-segment",
                "pci_segment=1,mmio32_aperture_weight=2",
                "pci_segment=1",
            ],
        ),
        "--pci-segment",
        "pci_segment=1",
    );
    assert!(err.contains("already configured"), "{err}");
}

#[test]
fn pci_segment_unknown_key() {
    let s = Scratch::new();
    let err = assert_rejected(
        &with_kernel(&s, &["--pci-segment", "pci_segment=0,bogus=1"]),
        "--pci-segment",
        "pci_segment=0,bogus=1",
    );
    assert!(err.contains("unknown key \"bogus\""), "{err}");
}

#[test]
fn missing_kernel_file() {
    let s = Scratch::new();
    let missing = s.path("no-such-vmlinux").display().to_string();
    let err = assert_rejected(&viaduct(["--kernel", &missing]), "--kernel", &missing);
    assert!(
        err.contains("No such file or directory"),
        "OS reason: {err}"
    );
}

#[test]
fn initramfs_is_a_directory() {
    let s = Scratch::new();
    let dir = s.dir.display().to_string();
    let err = assert_rejected(
        &with_kernel(&s, &["--initramfs", &dir]),
        "--initramfs",
        &dir,
    );
    assert!(err.contains("directory"), "{err}");
}

#[test]
fn initramfs_missing() {
    let s = Scratch::new();
    let missing = s.path("no-such-initramfs").display().to_string();
    assert_rejected(
        &with_kernel(&s, &["--initramfs", &missing]),
        "--initramfs",
        &missing,
    );
}

#[test]
fn serial_pty_unsupported() {
    let s = Scratch::new();
    let err = assert_rejected(&with_kernel(&s, &["--serial", "pty"]), "--serial", "pty");
    assert!(err.contains("not supported"), "{err}");
}

#[test]
fn serial_socket_unsupported_and_bad_file() {
    let s = Scratch::new();
    assert_rejected(
        &with_kernel(&s, &["--serial", "socket=/tmp/x.sock"]),
        "--serial",
        "socket=/tmp/x.sock",
    );
    let into_dir = format!("file={}", s.dir.display());
    assert_rejected(
        &with_kernel(&s, &["--serial", &into_dir]),
        "--serial",
        &into_dir,
    );
}

#[test]
fn serial_and_console_cannot_both_be_tty() {
    let s = Scratch::new();
    // --console tty is the default, so --serial tty alone conflicts too.
    for args in [
        &["--serial", "tty"][..],
        &["--serial", "tty", "--console", "tty"],
    ] {
        let err = assert_rejected(&with_kernel(&s, args), "--console", "tty");
        assert!(err.contains("--serial tty is given too"), "{err}");
        assert!(err.contains("with --console off"), "{err}");
    }
}

#[test]
fn console_modes_viaduct_lacks_and_bad_files_are_refused() {
    let s = Scratch::new();
    let err = assert_rejected(&with_kernel(&s, &["--console", "pty"]), "--console", "pty");
    assert!(err.contains("not supported"), "{err}");
    assert_rejected(
        &with_kernel(&s, &["--console", "socket=/tmp/c.sock"]),
        "--console",
        "socket=/tmp/c.sock",
    );
    let into_dir = format!("file={}", s.dir.display());
    assert_rejected(
        &with_kernel(&s, &["--console", &into_dir]),
        "--console",
        &into_dir,
    );
}

#[test]
fn rng_source_must_be_readable() {
    let s = Scratch::new();
    let missing = format!("src={}", s.path("no-such-rng").display());
    let err = assert_rejected(&with_kernel(&s, &["--rng", &missing]), "--rng", &missing);
    assert!(err.contains("cannot read the entropy source"), "{err}");
    let dir = format!("src={}", s.dir.display());
    let err = assert_rejected(&with_kernel(&s, &["--rng", &dir]), "--rng", &dir);
    assert!(err.contains("is a directory"), "{err}");
    assert_rejected(&with_kernel(&s, &["--rng", "iommu=on"]), "--rng", "iommu");
}

#[test]
fn cmdline_too_long() {
    let s = Scratch::new();
    let long = "a".repeat(70_000);
    let err = assert_rejected(&with_kernel(&s, &["--cmdline", &long]), "--cmdline", "aaaa");
    assert!(err.contains("70000 bytes"), "{err}");
}

#[test]
fn missing_kernel_flag() {
    let err = assert_rejected(&viaduct(["--cpus", "2"]), "--kernel", "required");
    assert!(err.contains("--kernel PATH"), "{err}");
}

#[test]
fn clap_errors_do_not_panic() {
    for args in [&["--no-such-flag"][..], &["--kernel"], &["--cpus"]] {
        let output = viaduct(args);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn help_mentions_every_flag() {
    let output = viaduct(["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--kernel",
        "--initramfs",
        "--cmdline",
        "--cpus",
        "--memory",
        "--serial",
        "--console",
        "--platform",
        "--pci-segment",
        "num_pci_segments=N",
        "[default: num_pci_segments=1]",
        "1 to 96",
        "pci_segment=K,mmio32_aperture_weight=W,mmio64_aperture_weight=W",
        "640 MiB",
        "in proportion to their weights",
        "-v",
        "--verbose",
        "--version",
        "--help",
        "boot=N",
        "size=SIZE",
        "file=PATH",
        "[default: boot=1]",
        "[default: size=512M]",
        "[default: null]",
        "[default: tty]",
        "--rng",
        "[default: src=/dev/urandom]",
        "hvc0",
        "RUST_LOG",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn version() {
    let output = viaduct(["--version"]);
    assert!(output.status.success());
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        out.trim(),
        format!("viaduct {}", env!("CARGO_PKG_VERSION")),
        "{out}"
    );
}

/// A valid command line gets past parsing: the only error left is `vmm::run`'s own (exit 1),
/// which does not name any flag.
fn assert_reaches_vmm(output: &Output) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(1), "stderr: {err}");
    assert!(err.starts_with("viaduct: error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(!err.contains("--"), "looks like a parse error: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn valid_config_reaches_vmm() {
    let s = Scratch::new();
    assert_reaches_vmm(&with_kernel(&s, &[]));
    let initramfs = s.path("initramfs").display().to_string();
    let serial_log = s.path("serial.log");
    let serial = format!("file={}", serial_log.display());
    assert_reaches_vmm(&with_kernel(
        &s,
        &[
            "--initramfs",
            &initramfs,
            "--cmdline",
            "console=ttyS0 reboot=k panic=1",
            "--cpus",
            "boot=254",
            "--memory",
            "size=2G",
            "--serial",
            &serial,
            "--console",
            "off",
        ],
    ));
    assert!(Path::new(&serial_log).is_file(), "serial file created");
}

#[test]
fn console_and_rng_values_reach_vmm() {
    let s = Scratch::new();
    let hvc0 = s.path("hvc0.log");
    let console = format!("file={}", hvc0.display());
    assert_reaches_vmm(&with_kernel(
        &s,
        &[
            "--console",
            &console,
            "--serial",
            "tty",
            "--rng",
            "src=/dev/zero",
        ],
    ));
    assert!(hvc0.is_file(), "console file created");
    for console in ["tty", "null", "off"] {
        assert_reaches_vmm(&with_kernel(&s, &["--console", console]));
    }
}

#[test]
fn valid_pci_segments_reach_vmm() {
    let s = Scratch::new();
    // --pci-segment before --platform, several values after one flag, and the flag repeated.
    assert_reaches_vmm(&with_kernel(
        &s,
        &[
            "--pci-segment",
            "pci_segment=0,mmio32_aperture_weight=2,mmio64_aperture_weight=2",
            "pci_segment=2",
            "--platform",
            "num_pci_segments=4",
            "--pci-segment",
            "pci_segment=1,mmio32_aperture_weight=1",
            "--pci-segment",
            "pci_segment=3,mmio64_aperture_weight=4294967295",
        ],
    ));
    assert_reaches_vmm(&with_kernel(
        &s,
        &[
            "--platform",
            "num_pci_segments=96",
            "--pci-segment",
            "mmio32_aperture_weight=3",
            "pci_segment=95",
        ],
    ));
}

#[test]
fn plain_values_and_lowercase_suffixes_are_accepted() {
    let s = Scratch::new();
    assert_reaches_vmm(&with_kernel(
        &s,
        &[
            "--cpus",
            "4",
            "--memory",
            "1g",
            "--serial",
            "tty",
            "--console",
            "null",
        ],
    ));
    assert_reaches_vmm(&with_kernel(
        &s,
        &["--memory", "size=16M", "--serial", "off"],
    ));
}

impl Scratch {
    /// Makes `name` a directory standing in for a sysfs device directory and returns its path.
    fn device_dir(&self, name: &str) -> String {
        let dir = self.path(name);
        fs::create_dir_all(&dir).unwrap();
        dir.display().to_string()
    }
}

#[test]
fn device_without_path() {
    let s = Scratch::new();
    let err = assert_rejected(
        &with_kernel(&s, &["--device", "id=gpu0"]),
        "--device",
        "id=gpu0",
    );
    assert!(err.contains("path= is required"), "{err}");
    assert!(err.contains("/sys/bus/pci/devices"), "says where: {err}");
}

#[test]
fn device_path_missing() {
    let s = Scratch::new();
    let missing = s.path("0000:01:00.0").display().to_string();
    let value = format!("path={missing}");
    let err = assert_rejected(&with_kernel(&s, &["--device", &value]), "--device", &value);
    assert!(
        err.contains(&format!(
            "no such device: {missing}; list devices with `ls /sys/bus/pci/devices`"
        )),
        "{err}"
    );
}

#[test]
fn device_path_is_a_regular_file() {
    let s = Scratch::new();
    let value = format!("path={}", s.kernel());
    let err = assert_rejected(&with_kernel(&s, &["--device", &value]), "--device", &value);
    assert!(err.contains("not a device directory"), "{err}");
    assert!(err.contains("a regular file"), "{err}");
}

#[test]
fn device_clique_out_of_range() {
    let s = Scratch::new();
    let dev = s.device_dir("0000:01:00.0");
    for clique in ["16", "x"] {
        let value = format!("path={dev},x_nv_gpudirect_clique={clique}");
        let err = assert_rejected(&with_kernel(&s, &["--device", &value]), "--device", &value);
        assert!(err.contains("from 0 to 15"), "states the range: {err}");
        assert!(err.contains("4-bit"), "says why: {err}");
        assert!(err.contains(&format!("not \"{clique}\"")), "{err}");
    }
}

#[test]
fn device_segment_beyond_num_pci_segments() {
    let s = Scratch::new();
    let dev = s.device_dir("0000:01:00.0");
    let value = format!("path={dev},pci_segment=1");
    let err = assert_rejected(&with_kernel(&s, &["--device", &value]), "--device", &value);
    assert!(err.contains("1 PCI segment (0)"), "says the count: {err}");
    assert!(
        err.contains("--platform num_pci_segments=2"),
        "suggests the fix: {err}"
    );
    // Checked after parsing: a later --platform makes the segment exist.
    let output = with_kernel(
        &s,
        &["--device", &value, "--platform", "num_pci_segments=2"],
    );
    assert_reaches_vmm_with_devices(&output);
}

#[test]
fn device_given_twice() {
    let s = Scratch::new();
    let dev = s.device_dir("0000:01:00.0");
    let first = format!("path={dev}");
    let second = format!("path={dev}/");
    // Several values after one flag.
    let err = assert_rejected(
        &with_kernel(&s, &["--device", &first, &second]),
        "--device",
        &second,
    );
    assert!(err.contains("already passed through"), "{err}");
    assert!(
        err.contains(&format!("--device {first}")),
        "names the first: {err}"
    );
    // Repeated flags, through a symlink.
    let link = s.path("link").display().to_string();
    std::os::unix::fs::symlink(&dev, &link).unwrap();
    let second = format!("path={link},x_nv_gpudirect_clique=1");
    let err = assert_rejected(
        &with_kernel(&s, &["--device", &first, "--device", &second]),
        "--device",
        &second,
    );
    assert!(err.contains("already passed through"), "{err}");
    assert!(err.contains("both resolve to"), "{err}");
}

#[test]
fn device_id_given_twice() {
    let s = Scratch::new();
    let dev0 = s.device_dir("0000:01:00.0");
    let dev1 = s.device_dir("0000:02:00.0");
    let first = format!("path={dev0},id=gpu");
    let second = format!("path={dev1},id=gpu");
    let err = assert_rejected(
        &with_kernel(&s, &["--device", &first, "--device", &second]),
        "--device",
        &second,
    );
    assert!(err.contains("id \"gpu\" is already used"), "{err}");
}

#[test]
fn device_unsupported_cloud_hypervisor_key() {
    let s = Scratch::new();
    let dev = s.device_dir("0000:01:00.0");
    let value = format!("path={dev},iommu=on");
    let err = assert_rejected(&with_kernel(&s, &["--device", &value]), "--device", &value);
    assert!(
        err.contains("\"iommu\" is a cloud-hypervisor option that viaduct does not support"),
        "{err}"
    );
}

#[test]
fn device_unknown_key() {
    let s = Scratch::new();
    let dev = s.device_dir("0000:01:00.0");
    let value = format!("path={dev},bogus=1");
    let err = assert_rejected(&with_kernel(&s, &["--device", &value]), "--device", &value);
    assert!(err.contains("unknown key \"bogus\""), "{err}");
    assert!(
        err.contains("supported keys: path, pci_segment, x_nv_gpudirect_clique, id"),
        "{err}"
    );
}

/// Like [`assert_reaches_vmm`], but the VMM's own error may name the device (its path contains
/// no `--`, yet the VMM may quote it); it must not be a `--device` parse error.
fn assert_reaches_vmm_with_devices(output: &Output) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(1), "stderr: {err}");
    assert!(err.starts_with("viaduct: error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(!err.contains("--device"), "looks like a parse error: {err}");
    assert!(!err.contains("path="), "looks like a parse error: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn valid_devices_reach_vmm() {
    let s = Scratch::new();
    let dev0 = s.device_dir("0000:01:00.0");
    let dev1 = s.device_dir("0000:02:00.0");
    let dev2 = s.device_dir("0000:03:00.0");
    let single = format!("path={dev0}");
    assert_reaches_vmm_with_devices(&with_kernel(&s, &["--device", &single]));
    // Several values after one flag, a repeated flag, every key, --platform given last.
    let first = format!("path={dev0}/,x_nv_gpudirect_clique=0,id=gpu0");
    let second = format!("path={dev1},pci_segment=1,x_nv_gpudirect_clique=15,id=gpu1");
    let third = format!("id=nic,path={dev2}");
    assert_reaches_vmm_with_devices(&with_kernel(
        &s,
        &[
            "--device",
            &first,
            &second,
            "--device",
            &third,
            "--platform",
            "num_pci_segments=2",
        ],
    ));
}

#[test]
fn help_describes_device() {
    let output = viaduct(["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--device <path=SYSFS[,pci_segment=K][,x_nv_gpudirect_clique=N][,id=NAME][,managed=on]>...",
        "managed=on",
        "/sys/bus/pci/devices/DDDD:BB:DD.F",
        "`pci_segment`",
        "`x_nv_gpudirect_clique`",
        "0 to 15",
        "4 bits",
        "`id`",
        "vfio-pci",
        "docs/vfio.md",
        "pci_device_id",
        "x_exclude_mmap_bars",
        "x_nv_gpudirect_clique=0,id=gpu1",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

// ---------------------------------------------------------------------------------------------
// --disk
// ---------------------------------------------------------------------------------------------

impl Scratch {
    /// Makes `name` a raw disk image of 1 MiB and returns its path.
    fn image(&self, name: &str) -> String {
        let path = self.path(name);
        fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        path.display().to_string()
    }
}

#[test]
fn disk_bad_values_are_one_error_line_each() {
    let s = Scratch::new();
    let img = s.image("disk.img");
    let missing = s.path("missing.img").display().to_string();
    let dir = s.device_dir("a-directory");
    let cases: Vec<(Vec<String>, String, &str)> = vec![
        (
            vec![format!("path={missing}")],
            format!("path={missing}"),
            "cannot access",
        ),
        (
            vec![format!("path={dir}")],
            format!("path={dir}"),
            "is a directory, not a raw disk image (a regular file) or a block device",
        ),
        (
            vec![format!("path={img},serial=ABCDEFGHIJKLMNOPQRSTU")],
            format!("path={img},serial=ABCDEFGHIJKLMNOPQRSTU"),
            "serial is 21 bytes long; the virtio-blk serial holds at most 20 bytes",
        ),
        (
            vec![format!("path={img},num_queues=0")],
            format!("path={img},num_queues=0"),
            "num_queues=0: want 1 to 255 request queues",
        ),
        (
            vec![format!("path={img},image_type=vhd")],
            format!("path={img},image_type=vhd"),
            "image_type=vhd is not supported: viaduct serves raw and qcow2 images",
        ),
        (
            vec![format!("path={img},id=a-disk-id-of-21-bytes")],
            format!("path={img},id=a-disk-id-of-21-bytes"),
            "is also the disk's virtio serial when serial= is not given",
        ),
        (
            vec![format!("path={img},vhost_user=on")],
            format!("path={img},vhost_user=on"),
            "does not support",
        ),
        (
            vec![
                format!("path={img},id=a"),
                format!("path={img},id=a,readonly=on"),
            ],
            format!("path={img},id=a,readonly=on"),
            "id \"a\" is already used by --disk",
        ),
        (
            vec![format!("path={img},pci_segment=1")],
            format!("path={img},pci_segment=1"),
            "PCI segment 1 does not exist",
        ),
        (
            vec!["readonly=on".to_string()],
            "readonly=on".to_string(),
            "path= is required",
        ),
    ];
    for (values, bad, want) in cases {
        let mut args = vec!["--disk".to_string()];
        args.extend(values);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = assert_rejected(&with_kernel(&s, &args), "--disk", &bad);
        assert!(err.contains(want), "{bad}: wanted {want:?} in {err}");
    }
}

#[test]
fn valid_disks_reach_vmm() {
    let s = Scratch::new();
    let a = s.image("a.img");
    let b = s.image("b.img");
    let first = format!("path={a},id=root,serial=SN1");
    let second = format!("path={b},readonly=on,pci_segment=1,image_type=raw");
    let out = with_kernel(
        &s,
        &[
            "--disk",
            &first,
            "--platform",
            "num_pci_segments=2",
            "--disk",
            &second,
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("--disk"), "looks like a parse error: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn help_describes_disk() {
    let output = viaduct(["--help"]);
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--disk <path=FILE[,readonly=on|off][,image_type=raw|qcow2][,backing_files=on|off][,num_queues=N][,queue_size=N][,pci_segment=K][,id=NAME][,serial=S]>...",
        "at most 20",
        "image_type=raw",
        "qcow2",
        "backing_files=on",
        "num_queues",
        "vhost_user",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

// ---------------------------------------------------------------------------------------------
// Host device commands against a fixture host tree (VIADUCT_SYSFS_ROOT and friends)
// ---------------------------------------------------------------------------------------------

use serde_json::Value;

/// A fake host: `sys`, `proc`, `dev` and a state file under one temporary directory.
struct HostTree {
    root: PathBuf,
}

impl HostTree {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "viaduct-cli-host-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        for dir in [
            "sys/bus/pci/devices",
            "sys/kernel/iommu_groups",
            "proc/self",
            "dev",
        ] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        fs::write(
            root.join("proc/self/mountinfo"),
            "1 1 0:2 / / rw - rootfs rootfs rw\n",
        )
        .unwrap();
        HostTree { root }
    }

    fn sys(&self, rel: &str) -> PathBuf {
        self.root.join("sys").join(rel)
    }

    fn file(&self, rel: &str, content: &str) {
        let p = self.root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    fn driver(&self, name: &str) -> PathBuf {
        let dir = self.sys(&format!("bus/pci/drivers/{name}"));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A PCI function in `group` on `driver`.
    fn pci(&self, bdf: &str, ids: (u16, u16, u32), driver: Option<&str>, group: u32) -> PathBuf {
        use std::os::unix::fs::symlink;
        let dir = self.sys(&format!("devices/pci0000:00/{bdf}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("vendor"), format!("0x{:04x}\n", ids.0)).unwrap();
        fs::write(dir.join("device"), format!("0x{:04x}\n", ids.1)).unwrap();
        fs::write(dir.join("class"), format!("0x{:06x}\n", ids.2)).unwrap();
        if let Some(d) = driver {
            symlink(self.driver(d), dir.join("driver")).unwrap();
        }
        let g = self.sys(&format!("kernel/iommu_groups/{group}/devices"));
        fs::create_dir_all(&g).unwrap();
        symlink(g.parent().unwrap(), dir.join("iommu_group")).unwrap();
        symlink(&dir, g.join(bdf)).unwrap();
        symlink(&dir, self.sys(&format!("bus/pci/devices/{bdf}"))).unwrap();
        dir
    }

    fn link(&self, target: &Path, link: &Path) {
        std::os::unix::fs::symlink(target, link).unwrap();
    }

    /// The example host.
    fn example() -> Self {
        let t = HostTree::new();
        t.pci(
            "0000:00:01.0",
            (0x8086, 0x1901, 0x060400),
            Some("pcieport"),
            1,
        );
        t.pci(
            "0000:01:00.0",
            (0x10de, 0x2204, 0x030000),
            Some("nvidia"),
            12,
        );
        t.pci(
            "0000:01:00.1",
            (0x10de, 0x1aef, 0x040300),
            Some("snd_hda_intel"),
            12,
        );
        let pf = t.pci("0000:02:00.0", (0x8086, 0x1521, 0x020000), Some("igb"), 13);
        t.file("sys/devices/pci0000:00/0000:02:00.0/sriov_totalvfs", "8\n");
        t.file("sys/devices/pci0000:00/0000:02:00.0/sriov_numvfs", "2\n");
        for (n, vf) in ["0000:02:10.0", "0000:02:10.4"].iter().enumerate() {
            let dir = t.pci(vf, (0x8086, 0x1520, 0x020000), Some("igbvf"), 20 + n as u32);
            t.link(&dir, &pf.join(format!("virtfn{n}")));
            t.link(&pf, &dir.join("physfn"));
        }
        t.pci(
            "0000:03:00.0",
            (0x10de, 0x1eb8, 0x030200),
            Some("nvidia"),
            14,
        );
        let ty = "sys/devices/pci0000:00/0000:03:00.0/mdev_supported_types/nvidia-63";
        t.file(&format!("{ty}/name"), "GRID T4-1B\n");
        t.file(&format!("{ty}/available_instances"), "16\n");
        t.file(&format!("{ty}/create"), "");
        t.pci(
            "0000:04:00.0",
            (0x1b36, 0x0010, 0x010802),
            Some("vfio-pci"),
            15,
        );
        t
    }

    /// Everything `viaduct check` wants.
    fn make_ready(&self) {
        self.file("sys/firmware/acpi/tables/DMAR", "DMAR");
        fs::create_dir_all(self.sys("class/iommu/dmar0")).unwrap();
        for m in ["vfio", "vfio_pci", "vfio_iommu_type1"] {
            fs::create_dir_all(self.sys(&format!("module/{m}"))).unwrap();
        }
        self.driver("vfio-pci");
        self.file("dev/kvm", "");
        self.file("dev/vfio/vfio", "");
        self.file("dev/vfio/15", "");
        self.file("proc/interrupts", " 24: 1 IR-PCI-MSI 512000-edge nvme0q0\n");
        self.file("proc/self/status", "CapEff:\t000001ffffffffff\n");
    }

    fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Command::new(env!("CARGO_BIN_EXE_viaduct"))
            .args(args)
            .env_remove("RUST_LOG")
            .env("VIADUCT_SYSFS_ROOT", self.root.join("sys"))
            .env("VIADUCT_PROC_ROOT", self.root.join("proc"))
            .env("VIADUCT_DEV_ROOT", self.root.join("dev"))
            .env("VIADUCT_STATE_FILE", self.root.join("run/bound.json"))
            .output()
            .expect("run viaduct")
    }
}

impl Drop for HostTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn device<'a>(list: &'a Value, bdf: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|d| d.get("bdf").and_then(Value::as_str) == Some(bdf))
        .unwrap_or_else(|| panic!("{bdf} not listed"))
}

#[test]
fn devices_json_reports_groups_sriov_and_mdev() {
    let t = HostTree::example();
    let out = t.run(["devices", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Value = serde_json::from_str(&stdout(&out)).expect("valid JSON");
    assert_eq!(list.as_array().unwrap().len(), 8);

    let gpu = device(&list, "0000:01:00.0");
    assert_eq!(gpu.get("vendor_id").unwrap().as_str(), Some("10de"));
    assert_eq!(gpu.get("device_id").unwrap().as_str(), Some("2204"));
    assert_eq!(gpu.get("class").unwrap().as_str(), Some("030000"));
    assert_eq!(gpu.get("driver").unwrap().as_str(), Some("nvidia"));
    assert_eq!(gpu.get("iommu_group").unwrap().as_i64(), Some(12));
    let members = gpu.get("group_members").unwrap().as_array().unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(
        members[0].get("bdf").unwrap().as_str(),
        Some("0000:01:00.1")
    );
    assert_eq!(
        members[0].get("driver").unwrap().as_str(),
        Some("snd_hda_intel")
    );
    assert_eq!(gpu.get("ready").unwrap().as_bool(), Some(false));

    let pf = device(&list, "0000:02:00.0");
    let sriov = pf.get("sriov").unwrap();
    assert_eq!(sriov.get("totalvfs").unwrap().as_i64(), Some(8));
    assert_eq!(sriov.get("numvfs").unwrap().as_i64(), Some(2));
    let vf = device(&list, "0000:02:10.4");
    assert_eq!(vf.get("physfn").unwrap().as_str(), Some("0000:02:00.0"));

    let t4 = device(&list, "0000:03:00.0");
    let types = t4.get("mdev_types").unwrap().as_array().unwrap();
    assert_eq!(types[0].get("type").unwrap().as_str(), Some("nvidia-63"));
    assert_eq!(types[0].get("name").unwrap().as_str(), Some("GRID T4-1B"));
    assert_eq!(
        types[0].get("available_instances").unwrap().as_i64(),
        Some(16)
    );

    let nvme = device(&list, "0000:04:00.0");
    assert_eq!(nvme.get("ready").unwrap().as_bool(), Some(true));
    assert_eq!(nvme.get("not_ready_reason"), Some(&Value::Null));
}

#[test]
fn devices_class_filter_and_table() {
    let t = HostTree::example();
    let out = t.run(["devices", "--class", "gpu", "--json"]);
    let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let bdfs: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.get("bdf").unwrap().as_str().unwrap())
        .collect();
    assert_eq!(bdfs, ["0000:01:00.0", "0000:03:00.0"]);
    let out = t.run(["devices", "--class", "net"]);
    assert!(out.status.success());
    let table = stdout(&out);
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(table.contains("SR-IOV 2/8 VFs"), "{table}");
    assert!(table.contains("VF of 0000:02:00.0"), "{table}");
    let out = t.run(["devices", "--class", "sound"]);
    assert_eq!(out.status.code(), Some(2));
}

/// One error line, exit `code`, no panic.
fn assert_command_error(output: &Output, code: i32) -> String {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(code), "{err}");
    assert!(err.starts_with("viaduct: error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn bind_refusals_name_the_device_and_the_remedy() {
    let t = HostTree::example();
    fs::remove_dir_all(t.sys("bus/pci/drivers/vfio-pci")).unwrap();
    let err = assert_command_error(&t.run(["bind", "0000:01:00.0"]), 1);
    assert!(
        err.contains("vfio-pci is not loaded: run modprobe vfio-pci"),
        "{err}"
    );
    t.driver("vfio-pci");
    let err = assert_command_error(&t.run(["bind", "00:01.0"]), 1);
    assert!(
        err.contains("0000:00:01.0 is a bridge (PCI-bridge, class 060400)"),
        "{err}"
    );
    let err = assert_command_error(&t.run(["bind", "0000:09:00.0"]), 1);
    assert!(err.contains("there is no PCI device 0000:09:00.0"), "{err}");
    let err = assert_command_error(&t.run(["bind", "nvme0"]), 2);
    assert!(err.contains("\"nvme0\" is not a PCI address"), "{err}");
    let err = assert_command_error(&t.run(["sriov", "0000:02:00.0", "--numvfs", "9"]), 1);
    assert!(err.contains("offers at most 8 VFs"), "{err}");
    let err = assert_command_error(&t.run(["mdev", "create", "0000:03:00.0", "nvidia-99"]), 1);
    assert!(
        err.contains("does not offer the mdev type nvidia-99; it offers: nvidia-63 (GRID T4-1B)"),
        "{err}"
    );
    let err = assert_command_error(
        &t.run(["mdev", "remove", "c2e088c6-7fd5-4b7d-9d5b-0f8c2b3c0a11"]),
        1,
    );
    assert!(err.contains("there is no mediated device"), "{err}");
}

#[test]
fn check_reports_ready_and_missing_vfio() {
    let t = HostTree::example();
    t.make_ready();
    let out = t.run(["check", "--device", "0000:04:00.0", "--memory", "1G"]);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(
        report.contains("ok    0000:04:00.0: 1b36:0010 NVMe on vfio-pci; IOMMU group 15 viable"),
        "{report}"
    );
    assert!(
        report.ends_with("this host is ready for passthrough\n"),
        "{report}"
    );

    // The GPU's group is not viable; its line says why and what to run.
    let out = t.run(["check", "--device", "/sys/bus/pci/devices/0000:01:00.0/"]);
    assert_eq!(out.status.code(), Some(1));
    let report = stdout(&out);
    assert!(
        report.contains("FAIL  0000:01:00.0: on nvidia, not vfio-pci"),
        "{report}"
    );

    for m in ["vfio", "vfio_pci", "vfio_iommu_type1"] {
        fs::remove_dir_all(t.sys(&format!("module/{m}"))).unwrap();
    }
    fs::remove_dir_all(t.sys("bus/pci/drivers/vfio-pci")).unwrap();
    let out = t.run(["check"]);
    assert_eq!(out.status.code(), Some(1));
    let report = stdout(&out);
    assert!(report.contains("FAIL  vfio modules: vfio, vfio_pci, vfio_iommu_type1 not loaded: run modprobe vfio-pci"), "{report}");
    assert!(
        report.contains("not ready for passthrough: 1 problem above"),
        "{report}"
    );
}

#[test]
fn managed_device_that_cannot_be_bound_stops_before_the_vm() {
    let s = Scratch::new();
    let t = HostTree::example();
    t.driver("vfio-pci");
    let bridge = format!(
        "path={},managed=on",
        t.sys("bus/pci/devices/0000:00:01.0").display()
    );
    let kernel = s.kernel();
    let out = t.run(["--kernel", &kernel, "--device", &bridge]);
    let err = assert_command_error(&out, 1);
    assert!(
        err.contains("managed device: 0000:00:01.0 is a bridge"),
        "{err}"
    );
    // A device already on vfio-pci is left alone and the VM starts (and fails on the kernel).
    let nvme = format!(
        "path={},managed=on",
        t.sys("bus/pci/devices/0000:04:00.0").display()
    );
    let out = t.run(["--kernel", &kernel, "--device", &nvme]);
    assert_reaches_vmm_with_devices(&out);
    let err = stderr(&out);
    assert!(!err.contains("managed"), "{err}");
    let maybe = format!(
        "path={},managed=maybe",
        t.sys("bus/pci/devices/0000:04:00.0").display()
    );
    let err = assert_rejected(
        &t.run(["--kernel", &kernel, "--device", &maybe]),
        "--device",
        &maybe,
    );
    assert!(
        err.contains("managed: \"maybe\" is not on, off, true or false"),
        "{err}"
    );
}

#[test]
fn mergeable_memory_with_a_passthrough_device_is_refused() {
    let s = Scratch::new();
    let dev = s.device_dir("0000:01:00.0");
    let device = format!("path={dev}");
    let err = assert_rejected(
        &with_kernel(
            &s,
            &["--memory", "size=1G,mergeable=on", "--device", &device],
        ),
        "--memory",
        "size=1G,mergeable=on",
    );
    assert!(
        err.contains("pinned pages cannot be merged") && err.contains("drop mergeable=on"),
        "{err}"
    );
}

#[test]
fn memory_backing_errors_name_the_key() {
    let s = Scratch::new();
    for (value, want) in [
        (
            "size=1G,hugepage_size=2M",
            "hugepage_size= needs hugepages=on",
        ),
        ("size=1G,hugepages=on,hugepage_size=3M", "must be 2M or 1G"),
        (
            "size=1G,hotplug_size=1G",
            "\"hotplug_size\" is a cloud-hypervisor option",
        ),
    ] {
        let err = assert_rejected(&with_kernel(&s, &["--memory", value]), "--memory", value);
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn api_socket_bad_values_are_usage_errors() {
    let s = Scratch::new();
    for (value, want) in [
        ("fd=x", "fd"),
        ("path=/s,fd=3", "one of the two"),
        ("path=/s,eject_timeout=0", "from 1 to 3600"),
    ] {
        let err = assert_rejected(
            &with_kernel(&s, &["--api-socket", value]),
            "--api-socket",
            value,
        );
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn api_socket_over_a_file_stops_before_the_vm_and_keeps_the_file() {
    let s = Scratch::new();
    let file = s.path("not-a-socket");
    fs::write(&file, b"precious").unwrap();
    let out = with_kernel(&s, &["--api-socket", file.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not a socket"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Refused before the kernel was even looked at, and the file is untouched.
    assert!(!err.contains("kernel"), "{err}");
    assert_eq!(fs::read(&file).unwrap(), b"precious");
}

#[test]
fn remote_without_a_server_says_what_to_check() {
    let s = Scratch::new();
    let sock = s.path("nobody.sock");
    let out = viaduct(["remote", "--api-socket", sock.to_str().unwrap(), "ping"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is viaduct running with --api-socket"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let out = viaduct([
        "remote",
        "--api-socket",
        sock.to_str().unwrap(),
        "frobnicate",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn seccomp_values() {
    let s = Scratch::new();
    let err = assert_rejected(
        &with_kernel(&s, &["--seccomp", "maybe"]),
        "--seccomp",
        "maybe",
    );
    assert!(err.contains("expected true"), "{err}");
    for ok in ["true", "false", "log", "on", "off"] {
        let out = with_kernel(&s, &["--seccomp", ok]);
        // Past parsing: the dummy kernel is what stops it.
        assert_ne!(out.status.code(), Some(2), "{ok}: {}", stderr(&out));
    }
}

#[test]
fn cloud_hypervisor_flags_viaduct_lacks_are_named() {
    let s = Scratch::new();
    for flag in [
        "--fs",
        "--pmem",
        "--vsock",
        "--balloon",
        "--numa",
        "--watchdog",
    ] {
        let out = with_kernel(&s, &[flag, "x"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
        assert!(
            err.starts_with(&format!(
                "viaduct: error: cloud-hypervisor's {flag} is not supported by viaduct: "
            )),
            "{err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// --net
// ---------------------------------------------------------------------------------------------

#[test]
fn net_bad_values_are_one_error_line_each() {
    let s = Scratch::new();
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["mac=52:54:00:12:34"],
            "mac=52:54:00:12:34",
            "is not a MAC address",
        ),
        (
            &["tap=t0,mac=ff:ff:ff:ff:ff:ff"],
            "mac=ff:ff:ff:ff:ff:ff",
            "multicast",
        ),
        (
            &["fd=250"],
            "fd=250",
            "fd=250 is not an open file descriptor",
        ),
        (
            &["tap=t0,num_queues=3"],
            "num_queues=3",
            "even number from 2 to 254",
        ),
        (&["tap=t0,queue_size=100"], "queue_size=100", "power of two"),
        (
            &["fd=[250,251],num_queues=2"],
            "fd=[250,251]",
            "needs 1 tap fds",
        ),
        (
            &["tap=t0,vhost_user=on"],
            "vhost_user=on",
            "does not support",
        ),
        (
            &["tap=much-too-long-name"],
            "much-too-long-name",
            "not a valid interface name",
        ),
        (
            &["tap=t0,ip=10.0.0.256"],
            "ip=10.0.0.256",
            "is not an IPv4 address",
        ),
        (
            &["tap=t0,id=a", "tap=t1,id=a"],
            "tap=t1,id=a",
            "id \"a\" is already used by --net",
        ),
    ];
    for (values, bad, want) in cases {
        let mut args = vec!["--net"];
        args.extend_from_slice(values);
        let err = assert_rejected(&with_kernel(&s, &args), "--net", bad);
        assert!(err.contains(want), "{bad}: wanted {want:?} in {err}");
    }
}

#[test]
fn net_fd_that_is_not_a_tap_is_refused() {
    let s = Scratch::new();
    // The child inherits stdin, a pipe here: open, but not a tap. Use a dup of it above 2.
    let kernel = s.kernel();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 7</dev/null; exec \"$0\" --kernel {kernel} --net fd=7"
        ))
        .arg(env!("CARGO_BIN_EXE_viaduct"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = assert_rejected(&out, "--net", "fd=7");
    assert!(err.contains("fd=7 is not a tap device"), "{err}");
}

#[test]
fn help_describes_net() {
    let output = viaduct(["--help"]);
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--net <tap=NAME|fd=N",
        "creating it when no such interface",
        "IFF_VNET_HDR",
        "num_queues",
        "offload_tso",
        "docs/network.md",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}
