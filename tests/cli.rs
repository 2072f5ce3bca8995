//! End-to-end tests of the `viaduct` binary's command line: every bad value must end in one clear
//! error line naming the flag and the value, a non-zero exit and no panic; good command lines must
//! get past parsing to `vmm::run`.

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
        &with_kernel(&s, &["--platform", "num_pci_segments=2,vfio_p2p_dma=off"]),
        "--platform",
        "num_pci_segments=2,vfio_p2p_dma=off",
    );
    assert!(
        err.contains("\"vfio_p2p_dma\" is a cloud-hypervisor option"),
        "{err}"
    );
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
fn console_tty_not_implemented() {
    let s = Scratch::new();
    let err = assert_rejected(&with_kernel(&s, &["--console", "tty"]), "--console", "tty");
    assert!(err.contains("not implemented"), "{err}");
    assert!(err.contains("--serial tty --console off"), "{err}");
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
        "[default: off]",
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
        "--device <path=SYSFS[,pci_segment=K][,x_nv_gpudirect_clique=N][,id=NAME]>...",
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
