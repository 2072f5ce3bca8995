//! The bad-input sweep (issue 14): a table of command lines that must each be refused before
//! anything starts — exit status 2, exactly one `viaduct: error: …` line on stderr, no panic —
//! across the VM flags and their keys, disk and device paths (missing, a directory, a regular
//! file, a character device, no permission), and the host-device and remote commands' arguments;
//! and a table of control-API requests (bad JSON bodies, wrong methods, malformed HTTP) that
//! must each get a 4xx answer whose body is one line: a JSON array of strings.
//!
//! No case runs a guest or touches a host device: every one fails while the command line (or the
//! request) is checked. The API cases run in-process against a VM stub, as the API server does
//! in vmm/src/api/tests.rs; what the VM itself refuses (an unknown device, a clique out of
//! range) needs a VM and is covered by the rig's hotplug test. Likewise a `--device` directory
//! that is not a PCI device bound to vfio-pci is refused by the VFIO layer when the VM starts
//! (exit 1), as `config::parse_device` documents; only its path is checked here.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use vmm::api::{dispatch, http, AddDeviceRequest, AddedDevice, ApiError, VmApi};

/// Files the cases refer to, in a scratch directory removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("viaduct-bad-input-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("adir")).unwrap();
        // Readable by the unprivileged user the no-permission cases run as.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("vmlinux"), b"not really a kernel").unwrap();
        fs::write(dir.join("disk.img"), vec![0u8; 1 << 20]).unwrap();
        let noperm = dir.join("noperm.img");
        fs::write(&noperm, vec![0u8; 1 << 20]).unwrap();
        fs::set_permissions(&noperm, fs::Permissions::from_mode(0o000)).unwrap();
        Self { dir }
    }

    /// `arg` with `{kernel}`, `{file}` (a 1 MiB regular file), `{dir}` (a directory),
    /// `{missing}` (a path that does not exist) and `{noperm}` (a file mode 000) filled in.
    fn fill(&self, arg: &str) -> String {
        let p = |name: &str| self.dir.join(name).display().to_string();
        arg.replace("{kernel}", &p("vmlinux"))
            .replace("{file}", &p("disk.img"))
            .replace("{dir}", &p("adir"))
            .replace("{missing}", &p("missing"))
            .replace("{noperm}", &p("noperm.img"))
            .replace("{long}", &"x".repeat(65536))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Prepended to every VM case: a kernel that exists, so the case's own flag is what fails.
const K: &str = "--kernel={kernel}";

/// (what the case is, its arguments). `{…}` placeholders: see [`Scratch::fill`].
const CLI_CASES: &[(&str, &[&str])] = &[
    // --cpus
    ("cpus zero", &[K, "--cpus", "boot=0"]),
    ("cpus plain zero", &[K, "--cpus", "0"]),
    ("cpus over 255", &[K, "--cpus", "boot=256"]),
    ("cpus not a number", &[K, "--cpus", "boot=two"]),
    ("cpus negative", &[K, "--cpus", "boot=-1"]),
    ("cpus unknown key", &[K, "--cpus", "boot=1,sockets=2"]),
    ("cpus unsupported key", &[K, "--cpus", "boot=1,max=4"]),
    ("cpus empty option", &[K, "--cpus", "boot=1,,"]),
    // --memory
    ("memory zero", &[K, "--memory", "size=0"]),
    ("memory not a size", &[K, "--memory", "size=lots"]),
    ("memory bad suffix", &[K, "--memory", "size=1X"]),
    (
        "memory overflow",
        &[K, "--memory", "size=99999999999999999999"],
    ),
    ("memory beyond the limit", &[K, "--memory", "size=1000T"]),
    ("memory unaligned", &[K, "--memory", "size=1001"]),
    (
        "memory bad toggle",
        &[K, "--memory", "size=512M,hugepages=maybe"],
    ),
    (
        "memory bad hugepage size",
        &[K, "--memory", "size=512M,hugepages=on,hugepage_size=3M"],
    ),
    (
        "memory unknown key",
        &[K, "--memory", "size=512M,colour=blue"],
    ),
    (
        "memory unsupported key",
        &[K, "--memory", "size=512M,hotplug_size=1G"],
    ),
    ("memory key twice", &[K, "--memory", "size=512M,size=1G"]),
    (
        "memory bad thp toggle",
        &[K, "--memory", "size=512M,thp=sometimes"],
    ),
    // --disk
    ("disk missing", &[K, "--disk", "path={missing}"]),
    ("disk is a directory", &[K, "--disk", "path={dir}"]),
    ("disk is a char device", &[K, "--disk", "path=/dev/null"]),
    ("disk without path", &[K, "--disk", "readonly=on"]),
    ("disk empty", &[K, "--disk", ""]),
    (
        "disk bad readonly",
        &[K, "--disk", "path={file},readonly=perhaps"],
    ),
    (
        "disk id over 20 bytes",
        &[K, "--disk", "path={file},id=abcdefghijklmnopqrstu"],
    ),
    (
        "disk serial over 20 bytes",
        &[K, "--disk", "path={file},serial=abcdefghijklmnopqrstu"],
    ),
    ("disk unknown key", &[K, "--disk", "path={file},speed=fast"]),
    (
        "disk unsupported key",
        &[K, "--disk", "path={file},vhost_user=on"],
    ),
    (
        "disk segment beyond the platform",
        &[K, "--disk", "path={file},pci_segment=3"],
    ),
    (
        "disk segment not a number",
        &[K, "--disk", "path={file},pci_segment=one"],
    ),
    (
        "disk given twice",
        &[K, "--disk", "path={file}", "--disk", "path={file}"],
    ),
    ("disk unterminated quote", &[K, "--disk", "path=\"{file}"]),
    // --device
    ("device missing", &[K, "--device", "path={missing}"]),
    ("device is a regular file", &[K, "--device", "path={file}"]),
    (
        "device is a char device",
        &[K, "--device", "path=/dev/null"],
    ),
    ("device without path", &[K, "--device", "id=gpu0"]),
    ("device empty", &[K, "--device", ""]),
    (
        "device clique out of range",
        &[K, "--device", "path={dir},x_nv_gpudirect_clique=16"],
    ),
    (
        "device clique not a number",
        &[K, "--device", "path={dir},x_nv_gpudirect_clique=x"],
    ),
    (
        "device segment beyond the platform",
        &[K, "--device", "path={dir},pci_segment=2"],
    ),
    (
        "device unknown key",
        &[K, "--device", "path={dir},colour=red"],
    ),
    (
        "device unsupported key",
        &[K, "--device", "path={dir},iommu=on"],
    ),
    (
        "device bad managed",
        &[K, "--device", "path={dir},managed=sometimes"],
    ),
    // --serial, --console
    ("serial pty", &[K, "--serial", "pty"]),
    (
        "serial socket",
        &[K, "--serial", "socket=/tmp/viaduct-serial.sock"],
    ),
    ("serial empty file", &[K, "--serial", "file="]),
    ("serial file is a directory", &[K, "--serial", "file={dir}"]),
    (
        "serial file in a missing directory",
        &[K, "--serial", "file={missing}/serial.log"],
    ),
    ("serial unknown mode", &[K, "--serial", "loud"]),
    ("console unknown mode", &[K, "--console", "loud"]),
    (
        "serial and console both tty",
        &[K, "--serial", "tty", "--console", "tty"],
    ),
    (
        "console file is a directory",
        &[K, "--console", "file={dir}"],
    ),
    ("console pty", &[K, "--console", "pty"]),
    // --rng
    ("rng source missing", &[K, "--rng", "src={missing}"]),
    ("rng source is a directory", &[K, "--rng", "src={dir}"]),
    ("rng unknown key", &[K, "--rng", "src=/dev/urandom,speed=9"]),
    // --disk formats
    (
        "disk image type vhd",
        &[K, "--disk", "path={file},image_type=vhd"],
    ),
    (
        "disk backing files on a raw image",
        &[K, "--disk", "path={file},backing_files=on"],
    ),
    (
        "disk zero queues",
        &[K, "--disk", "path={file},num_queues=0"],
    ),
    (
        "disk queue size not a power of two",
        &[K, "--disk", "path={file},queue_size=100"],
    ),
    // --net
    (
        "net invalid mac",
        &[K, "--net", "tap=vtest0,mac=52:54:00:zz:00:01"],
    ),
    (
        "net multicast mac",
        &[K, "--net", "tap=vtest0,mac=01:00:5e:00:00:01"],
    ),
    ("net fd not a number", &[K, "--net", "fd=seven"]),
    ("net fd that is not open", &[K, "--net", "fd=987"]),
    ("net fd that is a file", &[K, "--net", "fd=0"]),
    ("net unknown key", &[K, "--net", "tap=vtest0,colour=red"]),
    (
        "net bad ip",
        &[K, "--net", "tap=vtest0,ip=300.1.1.1,mask=255.255.0.0"],
    ),
    ("net zero queues", &[K, "--net", "tap=vtest0,num_queues=0"]),
    // --api-socket
    ("api socket empty", &[K, "--api-socket", ""]),
    ("api socket negative fd", &[K, "--api-socket", "fd=-1"]),
    (
        "api socket fd not a number",
        &[K, "--api-socket", "fd=three"],
    ),
    (
        "api socket path and fd",
        &[K, "--api-socket", "path=/tmp/viaduct-api.sock,fd=3"],
    ),
    (
        "api socket eject timeout 0",
        &[K, "--api-socket", "path=/tmp/v.sock,eject_timeout=0"],
    ),
    (
        "api socket eject timeout huge",
        &[K, "--api-socket", "path=/tmp/v.sock,eject_timeout=99999"],
    ),
    (
        "api socket unknown key",
        &[K, "--api-socket", "path=/tmp/v.sock,mode=0600"],
    ),
    // --platform, --pci-segment
    (
        "platform zero segments",
        &[K, "--platform", "num_pci_segments=0"],
    ),
    (
        "platform too many segments",
        &[K, "--platform", "num_pci_segments=99999"],
    ),
    (
        "platform segments not a number",
        &[K, "--platform", "num_pci_segments=many"],
    ),
    (
        "platform bad p2p toggle",
        &[K, "--platform", "vfio_p2p_dma=maybe"],
    ),
    ("platform unknown key", &[K, "--platform", "colour=red"]),
    (
        "platform unsupported key",
        &[K, "--platform", "iommu_segments=1"],
    ),
    (
        "pci segment zero weight",
        &[K, "--pci-segment", "pci_segment=0,mmio32_aperture_weight=0"],
    ),
    (
        "pci segment beyond the platform",
        &[K, "--pci-segment", "pci_segment=4"],
    ),
    (
        "pci segment not a number",
        &[K, "--pci-segment", "pci_segment=one"],
    ),
    // --seccomp
    ("seccomp bad value", &[K, "--seccomp", "sometimes"]),
    ("seccomp empty", &[K, "--seccomp", ""]),
    // --kernel, --initramfs, --cmdline
    ("no kernel", &["--cpus", "boot=1"]),
    ("kernel missing", &["--kernel", "{missing}"]),
    ("kernel is a directory", &["--kernel", "{dir}"]),
    ("kernel no permission", &["--kernel", "{noperm}"]),
    ("initramfs missing", &[K, "--initramfs", "{missing}"]),
    ("initramfs is a directory", &[K, "--initramfs", "{dir}"]),
    ("cmdline too long", &[K, "--cmdline", "{long}"]),
    ("disk no permission", &[K, "--disk", "path={noperm}"]),
    (
        "serial file no permission",
        &[K, "--serial", "file={noperm}"],
    ),
    // clap: flags and values
    ("unknown flag", &[K, "--turbo"]),
    (
        "unsupported cloud-hypervisor flag",
        &[K, "--fs", "tag=x,socket=/tmp/fs.sock"],
    ),
    ("flag without its value", &[K, "--cpus"]),
    (
        "flag given twice",
        &[K, "--memory", "size=1G", "--memory", "size=2G"],
    ),
    ("stray positional argument", &[K, "vmlinux"]),
    // host device and remote commands
    ("devices bad class", &["devices", "--class", "toasters"]),
    ("bind without a device", &["bind"]),
    ("bind not a BDF", &["bind", "not-a-bdf"]),
    ("unbind not a BDF", &["unbind", "99:99:99.9"]),
    (
        "sriov numvfs not a number",
        &["sriov", "0000:00:00.0", "--numvfs", "many"],
    ),
    ("sriov without numvfs", &["sriov", "0000:00:00.0"]),
    (
        "mdev create not a BDF",
        &["mdev", "create", "not-a-bdf", "nvidia-63"],
    ),
    ("mdev remove not a UUID", &["mdev", "remove", "not-a-uuid"]),
    ("remote without its socket", &["remote", "ping"]),
    (
        "remote unknown command",
        &["remote", "--api-socket", "/tmp/v.sock", "explode"],
    ),
    (
        "remote add-device without path",
        &[
            "remote",
            "--api-socket",
            "/tmp/v.sock",
            "add-device",
            "id=x",
        ],
    ),
    ("check bad memory", &["check", "--memory", "size=lots"]),
    ("VM flags with a command", &[K, "devices"]),
    ("unknown command", &["frobnicate"]),
];

/// Cases that need an unprivileged user when the tests run as root (root opens any file).
fn needs_unprivileged(args: &[&str]) -> bool {
    args.iter().any(|a| a.contains("{noperm}"))
}

fn run(scratch: &Scratch, args: &[&str]) -> Output {
    let unprivileged = needs_unprivileged(args);
    let args: Vec<String> = args.iter().map(|a| scratch.fill(a)).collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_viaduct"));
    cmd.args(&args)
        .current_dir(&scratch.dir)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1");
    // SAFETY: geteuid has no preconditions and touches no memory.
    if unprivileged && unsafe { libc::geteuid() } == 0 {
        cmd.uid(65534).gid(65534);
    }
    cmd.output().expect("run viaduct")
}

#[test]
fn every_bad_command_line_is_one_error_line_and_exit_2() {
    assert!(
        CLI_CASES.len() >= 60,
        "the sweep has {} CLI cases",
        CLI_CASES.len()
    );
    let scratch = Scratch::new();
    let mut failures = Vec::new();
    for (name, args) in CLI_CASES {
        let out = run(&scratch, args);
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        let problem = if err.contains("panicked") || err.contains("backtrace") {
            Some("panicked")
        } else if out.status.code() != Some(2) {
            Some("exit status is not 2")
        } else if lines.len() != 1 {
            Some("not exactly one stderr line")
        } else if !lines[0].starts_with("viaduct: error: ") {
            Some("not a `viaduct: error:` line")
        } else if !out.stdout.is_empty() {
            Some("wrote to stdout")
        } else {
            None
        };
        if let Some(problem) = problem {
            failures.push(format!(
                "{name}: {problem} (status {:?}): {err:?}",
                out.status.code()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A VM that accepts every request it is given: what is refused below is refused before it.
struct AcceptingVm;

impl VmApi for AcceptingVm {
    fn info(&self) -> Result<serde_json::Value, ApiError> {
        Ok(serde_json::json!({}))
    }
    fn add_device(&self, r: AddDeviceRequest) -> Result<AddedDevice, ApiError> {
        Ok(AddedDevice {
            id: r.id.unwrap_or_default(),
            bdf: "0000:00:03.0".into(),
        })
    }
    fn remove_device(&self, _id: &str) -> Result<(), ApiError> {
        Ok(())
    }
    fn shutdown(&self) -> Result<(), ApiError> {
        Ok(())
    }
    fn reboot(&self) -> Result<(), ApiError> {
        Ok(())
    }
    fn power_button(&self) -> Result<(), ApiError> {
        Ok(())
    }
    fn shutdown_vmm(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

/// (what the case is, raw HTTP request). Bodies get their Content-Length filled in.
const API_CASES: &[(&str, &str, &str, &str)] = &[
    ("add-device without body", "PUT", "vm.add-device", ""),
    (
        "add-device not JSON",
        "PUT",
        "vm.add-device",
        "path=/sys/bus/pci/devices/x",
    ),
    (
        "add-device truncated JSON",
        "PUT",
        "vm.add-device",
        "{\"path\": \"/x\"",
    ),
    ("add-device JSON null", "PUT", "vm.add-device", "null"),
    ("add-device empty JSON array", "PUT", "vm.add-device", "[]"),
    (
        "add-device without path",
        "PUT",
        "vm.add-device",
        "{\"id\": \"gpu0\"}",
    ),
    (
        "add-device path not a string",
        "PUT",
        "vm.add-device",
        "{\"path\": 5}",
    ),
    (
        "add-device unknown field",
        "PUT",
        "vm.add-device",
        "{\"path\": \"/x\", \"colour\": 1}",
    ),
    (
        "add-device negative segment",
        "PUT",
        "vm.add-device",
        "{\"path\": \"/x\", \"pci_segment\": -1}",
    ),
    (
        "add-device segment over 16 bits",
        "PUT",
        "vm.add-device",
        "{\"path\": \"/x\", \"pci_segment\": 65536}",
    ),
    (
        "add-device clique over 8 bits",
        "PUT",
        "vm.add-device",
        "{\"path\": \"/x\", \"x_nv_gpudirect_clique\": 256}",
    ),
    (
        "add-device managed not a bool",
        "PUT",
        "vm.add-device",
        "{\"path\": \"/x\", \"managed\": \"yes\"}",
    ),
    (
        "add-device id not a string",
        "PUT",
        "vm.add-device",
        "{\"path\": \"/x\", \"id\": [1]}",
    ),
    (
        "add-device invalid UTF-8",
        "PUT",
        "vm.add-device",
        "{\"path\": \"\u{fffd}\u{0}\"}",
    ),
    ("remove-device without body", "PUT", "vm.remove-device", ""),
    ("remove-device without id", "PUT", "vm.remove-device", "{}"),
    (
        "remove-device id not a string",
        "PUT",
        "vm.remove-device",
        "{\"id\": 7}",
    ),
    (
        "remove-device extra field",
        "PUT",
        "vm.remove-device",
        "{\"id\": \"a\", \"force\": true}",
    ),
    ("add-device with GET", "GET", "vm.add-device", ""),
    ("ping with PUT", "PUT", "vmm.ping", ""),
    ("shutdown with POST", "POST", "vm.shutdown", ""),
    ("unknown endpoint", "GET", "vm.explode", ""),
    (
        "cloud-hypervisor endpoint viaduct lacks",
        "PUT",
        "vm.resize",
        "{\"desired_vcpus\": 2}",
    ),
];

/// Raw requests that are not well-formed HTTP.
const RAW_CASES: &[(&str, &[u8])] = &[
    ("garbage", b"\x00\x01\x02 hello\r\n\r\n"),
    ("no path", b"GET\r\n\r\n"),
    (
        "bad content length",
        b"PUT /api/v1/vm.shutdown HTTP/1.1\r\nContent-Length: many\r\n\r\n",
    ),
    (
        "body over the limit",
        b"PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
    ),
    (
        "body shorter than its length",
        b"PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}",
    ),
    (
        "headers never end",
        b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n",
    ),
    ("outside the API", b"GET /index.html HTTP/1.1\r\n\r\n"),
];

/// Checks an error answer: a 4xx status and a body that is one line, a non-empty JSON array of
/// strings.
fn check_answer(name: &str, status: u16, body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    if !(400..500).contains(&status) {
        return Some(format!("{name}: status {status}, body {text:?}"));
    }
    if text.contains('\n') {
        return Some(format!("{name}: body is not one line: {text:?}"));
    }
    match serde_json::from_slice::<Vec<String>>(body) {
        Ok(m) if !m.is_empty() && m.iter().all(|s| !s.is_empty() && !s.contains('\n')) => None,
        _ => Some(format!(
            "{name}: body is not a JSON array of one-line strings: {text:?}"
        )),
    }
}

#[test]
fn every_bad_api_request_is_a_4xx_with_a_one_line_json_error() {
    let mut failures = Vec::new();
    for (name, method, endpoint, body) in API_CASES {
        let raw = format!(
            "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = std::panic::catch_unwind(|| {
            let req = http::read_request(&mut raw.as_bytes()).unwrap();
            dispatch(&AcceptingVm, &req)
        });
        match answer {
            Ok((status, body)) => failures.extend(check_answer(name, status, &body)),
            Err(_) => failures.push(format!("{name}: panicked")),
        }
    }
    for (name, raw) in RAW_CASES {
        let answer = std::panic::catch_unwind(|| match http::read_request(&mut &raw[..]) {
            Ok(req) => dispatch(&AcceptingVm, &req),
            Err(e) => (e.status(), ApiError::from_error(e.status(), &e).body()),
        });
        match answer {
            Ok((status, body)) => failures.extend(check_answer(name, status, &body)),
            Err(_) => failures.push(format!("{name}: panicked")),
        }
    }
    let total = API_CASES.len() + RAW_CASES.len();
    assert!(total >= 30, "the API sweep has {total} cases");
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
