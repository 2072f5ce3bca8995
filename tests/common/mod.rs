//! Runs scenarios in the nested test rig (`resources/rig/run.sh`, described in `docs/rig.md`)
//! and reads the results back out of the rig host's serial log.
//!
//! A scenario is a shell script that the rig host (L2, a Linux with nested KVM) runs; in it
//! `viaduct` is on the PATH and the guest images are under `/guest`. The rig's own lines start
//! with `RIG-`, the guest's with `GUEST-`, and [`viaduct_command`] adds `VIADUCT-EXIT=` and
//! `VIADUCT-STDERR| ` lines. A rig that cannot run fails the test; it is never skipped.

// Each test binary that declares `mod common;` uses only part of this module.
#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

mod stall;

/// How long the whole rig run (QEMU boot of L2, the scenario, power-off) may take.
/// `VIADUCT_RIG_TIMEOUT` overrides it.
pub const RIG_TIMEOUT_SECS: u64 = 600;

/// How long viaduct may run inside a scenario before `rig-bounded` (resources/rig/bounded.sh)
/// prints what its threads are doing and kills it, well inside
/// [`RIG_TIMEOUT_SECS`] so that a hung guest fails one test instead of the rig.
pub const VIADUCT_TIMEOUT_SECS: u64 = 240;

/// The exit status left when `rig-bounded` had to kill viaduct (128 + SIGKILL; SIGKILL because
/// viaduct handles SIGTERM and would exit with its own status).
pub const VIADUCT_TIMED_OUT: i32 = 137;

/// Prefix of each line viaduct wrote to stderr, in scenarios built with [`viaduct_command`].
pub const VIADUCT_STDERR_PREFIX: &str = "VIADUCT-STDERR| ";

/// The harness's own files in a test's directory: the scenario, the rig host's serial log,
/// run.sh's stderr, and the log of a run that stalled (module `stall`).
const SCENARIO_FILE: &str = "scenario.sh";
const LOG_FILE: &str = "serial.log";
const STDERR_FILE: &str = "run.stderr";
const STALLED_LOG_FILE: &str = "serial.stalled.log";

/// One finished rig run: the rig host's serial log and where it is kept.
pub struct RigRun {
    /// Everything L2 printed on its console: kernel messages, the scenario's output, viaduct's
    /// output and, through viaduct's serial port, the guest's.
    pub log: String,
    /// The file holding `log`: `target/rig/<test name>/serial.log`.
    pub log_path: PathBuf,
    /// Wall-clock seconds the rig run took.
    pub seconds: f64,
}

/// Runs `scenario` in the rig with the `viaduct` binary under test and returns the log.
///
/// Panics (with the log's tail) when the rig itself fails: no L2 boot, no `/dev/kvm`, the
/// scenario not finishing in time. Whether the scenario succeeded is for the caller to judge.
pub fn run_rig(test_name: &str, scenario: &str) -> RigRun {
    fresh_rig_dir(test_name);
    run_rig_with(test_name, scenario, &[])
}

/// Empties and creates `target/rig/<test_name>` and returns it.
pub fn fresh_rig_dir(test_name: &str) -> PathBuf {
    let dir = rig_dir(test_name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// [`run_rig`] with `qemu_args` added to the L1 QEMU command line (after `run.sh ... --`), and
/// without emptying the test's directory first (it may hold the disk images those arguments
/// name; see [`RigHost`]).
pub fn run_rig_with(test_name: &str, scenario: &str, qemu_args: &[String]) -> RigRun {
    run_rig_with_files(test_name, scenario, &[], qemu_args)
}

/// [`run_rig_with`] that also puts `files` into the rig host: each `(source on this machine,
/// absolute path in L2)` becomes a `run.sh --file SRC=DEST`.
pub fn run_rig_with_files(
    test_name: &str,
    scenario: &str,
    files: &[(PathBuf, String)],
    qemu_args: &[String],
) -> RigRun {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = rig_dir(test_name);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let scenario_path = dir.join(SCENARIO_FILE);
    let log_path = dir.join(LOG_FILE);
    let stderr_path = dir.join(STDERR_FILE);
    fs::write(&scenario_path, scenario).expect("write the scenario");

    let timeout = std::env::var("VIADUCT_RIG_TIMEOUT").unwrap_or(RIG_TIMEOUT_SECS.to_string());
    let stall = timeout
        .parse()
        .ok()
        .and_then(|secs| stall::stall_secs(scenario, secs));
    // Only a watched run can be run again, so only then are the test's files kept.
    let watch = stall.map(|secs| {
        let files = stall::FilesBeforeRun::take(
            &dir,
            &[SCENARIO_FILE, LOG_FILE, STDERR_FILE, STALLED_LOG_FILE],
        )
        .unwrap_or_else(|e| panic!("cannot copy the files of {}: {e}", dir.display()));
        (secs, files)
    });
    let file_args: Vec<String> = files
        .iter()
        .flat_map(|(src, dest)| ["--file".to_string(), format!("{}={dest}", src.display())])
        .collect();
    let mut stalled_before = false;
    loop {
        let started = Instant::now();
        let status = Command::new("bash")
            .arg(repo.join("resources/rig/run.sh"))
            .arg("--viaduct")
            .arg(env!("CARGO_BIN_EXE_viaduct"))
            .arg("--scenario")
            .arg(&scenario_path)
            .arg("--log")
            .arg(&log_path)
            .arg("--timeout")
            .arg(&timeout)
            .args(
                stall
                    .map(|secs| ["--stall".to_string(), secs.to_string()])
                    .iter()
                    .flatten(),
            )
            .args(&file_args)
            .args(if qemu_args.is_empty() {
                &[][..]
            } else {
                &["--"][..]
            })
            .args(qemu_args)
            .stdin(Stdio::null())
            // The serial log goes to `log_path`; the copy on stdout would only flood the test
            // output.
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr_path).expect("create run.stderr"))
            .status()
            .unwrap_or_else(|e| panic!("cannot run resources/rig/run.sh: {e}"));
        let seconds = started.elapsed().as_secs_f64();

        let raw = fs::read(&log_path).unwrap_or_default();
        let run = RigRun {
            log: String::from_utf8_lossy(&raw).into_owned(),
            log_path: log_path.clone(),
            seconds,
        };
        let rig_stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
        eprintln!(
            "[{test_name}] rig run took {seconds:.1}s; log: {}",
            log_path.display()
        );
        if status.success() {
            return run;
        }
        if let Some((secs, files)) = watch.as_ref().filter(|_| !stalled_before) {
            if stall::stalled(&run.log) {
                // The emulator stopped the rig host (module `stall`): keep its log, put the
                // test's files back and run the scenario once more.
                let kept = dir.join(STALLED_LOG_FILE);
                fs::rename(&log_path, &kept).expect("keep the stalled run's log");
                files.restore().unwrap_or_else(|e| {
                    panic!("cannot put back the files of {}: {e}", dir.display())
                });
                eprintln!(
                    "[{test_name}] RIG-RERUN: the rig host stalled after {seconds:.1}s (its log \
                     stood still for {secs}s; its CPUs are in the RIG-STALL lines of {}): \
                     running the scenario once more",
                    kept.display()
                );
                stalled_before = true;
                continue;
            }
        }
        panic!(
            "the rig failed for test {test_name} ({status}){}:\n{}\n{}",
            if stalled_before {
                format!(" in its second run, the first one stalled ({STALLED_LOG_FILE})")
            } else {
                String::new()
            },
            rig_stderr.trim_end(),
            run.context()
        );
    }
}

/// `target/rig/<test_name>`: each test has its own directory, so tests can run at once.
pub fn rig_dir(test_name: &str) -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target dir>/tmp`.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR has a parent")
        .to_path_buf();
    target.join("rig").join(test_name)
}

/// A fresh token for `viaduct_marker=`, different in every call and every run.
pub fn marker_token() -> String {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("m{:016x}", hasher.finish())
}

/// Scenario lines that run `viaduct -v <args>` in the rig host, bounded by
/// [`VIADUCT_TIMEOUT_SECS`]. Its stdout (the guest's serial console with `--serial tty`) goes to
/// the log as is, each stderr line with [`VIADUCT_STDERR_PREFIX`], then `VIADUCT-EXIT=<status>`.
pub fn viaduct_command(args: &str) -> String {
    format!(
        "echo \"RIG-VIADUCT-START uptime=$(cut -d' ' -f1 /proc/uptime)\"\n\
         {{ {{ rig-bounded {VIADUCT_TIMEOUT_SECS} viaduct -v {args} 2>&1 1>&3 3>&-; \
         echo $? >/tmp/viaduct.status; }} | sed 's/^/{VIADUCT_STDERR_PREFIX}/'; }} 3>&1\n\
         echo \"VIADUCT-EXIT=$(cat /tmp/viaduct.status) uptime=$(cut -d' ' -f1 /proc/uptime)\"\n"
    )
}

/// Scenario lines that start `viaduct -v <args>` in the background (bounded like
/// [`viaduct_command`]), send it SIGTERM once its output (guest console and stderr) has a line
/// with `wait_for` (or after 180 s), and print its output and exit status as
/// [`viaduct_command`] does.
pub fn viaduct_stopped_by_sigterm(args: &str, wait_for: &str) -> String {
    format!(
        "echo \"RIG-VIADUCT-START uptime=$(cut -d' ' -f1 /proc/uptime)\"\n\
         ( rig-bounded {VIADUCT_TIMEOUT_SECS} viaduct -v {args} >/tmp/held.log 2>&1; \
         echo $? >/tmp/held.status ) &\n\
         n=0; while ! grep -q '{wait_for}' /tmp/held.log && [ $n -lt 900 ]; do sleep 0.2; \
         n=$((n+1)); done\n\
         echo \"RIG-SIGTERM uptime=$(cut -d' ' -f1 /proc/uptime)\"\n\
         kill -TERM $(pidof viaduct)\n\
         wait\n\
         sed 's/^viaduct/{VIADUCT_STDERR_PREFIX}viaduct/' /tmp/held.log\n\
         echo \"VIADUCT-EXIT=$(cat /tmp/held.status) uptime=$(cut -d' ' -f1 /proc/uptime)\"\n"
    )
}

/// Splits log text into lines without the terminal's carriage returns.
fn clean_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n')
        .map(|line| line.trim_matches(|c: char| c == '\r' || c == '\0'))
}

/// The value of each `KEY=value` in `text`, in order. The key must not be glued to a longer
/// name (`GUEST-CPUS=` does not match `XGUEST-CPUS=` nor `GUEST-CPUS-ONLINE=`); the value runs to
/// the next whitespace.
///
/// The rig host's lines and the guest's share one console, so one writer's line can land in
/// the middle of the other's (`GUEST-A=host-m73fRIG-B=guest-m99`). A `RIG-` or `GUEST-` key
/// after a lower-case letter or digit is such a line: it is found, and the value before it ends
/// where it starts.
fn values_in<'a>(text: &'a str, key: &str) -> Vec<(usize, &'a str)> {
    let needle = format!("{key}=");
    let marked = is_marked_key(key);
    let mut found = Vec::new();
    let mut offset = 0;
    for line in clean_lines(text) {
        let mut from = 0;
        while let Some(pos) = line[from..].find(&needle) {
            let start = from + pos;
            let glued = line[..start].chars().next_back().is_some_and(|c| {
                c.is_ascii_uppercase()
                    || c == '-'
                    || c == '_'
                    || (c.is_ascii_alphanumeric() && !marked)
            });
            let rest = &line[start + needle.len()..];
            if !glued {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                let end = marked_key_inside(&rest[..end]).unwrap_or(end);
                found.push((offset + start, &rest[..end]));
            }
            from = start + needle.len();
        }
        offset += line.len() + 1;
    }
    found
}

/// `text` without the lines other writers put in the middle of a line: each `RIG-…=` or
/// `GUEST-…=` line and each kernel message (`[ 12.345678] …`) is cut from where it starts to
/// its newline, so the line it split reads whole again.
///
/// rig_qcow2, 2026-12-04: the guest's `GUEST-NET-IF=…` line landed between agetty's
/// `viaduct-cloud ` and its `login: `.
fn without_inserted_lines(text: &str) -> String {
    let mut kept = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = inserted_line_start(rest) {
        kept.push_str(&rest[..start]);
        rest = rest[start..]
            .find('\n')
            .map_or("", |nl| &rest[start + nl + 1..]);
    }
    kept.push_str(rest);
    kept
}

/// Where in `text` the first line of [`without_inserted_lines`]' kinds starts.
fn inserted_line_start(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..text.len()).find(|&i| {
        if !text.is_char_boundary(i) {
            return false;
        }
        let glued = i > 0 && {
            let before = bytes[i - 1];
            before.is_ascii_uppercase() || before == b'-' || before == b'_'
        };
        let tail = &text[i..];
        let marked = !glued
            && is_marked_key(tail)
            && tail.find('=').is_some_and(|eq| {
                tail[..eq]
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
            });
        marked || is_kernel_timestamp(tail)
    })
}

/// Whether `text` starts with a kernel message's `[ seconds.micros]`.
fn is_kernel_timestamp(text: &str) -> bool {
    let Some(inner) = text.strip_prefix('[') else {
        return false;
    };
    let Some((stamp, _)) = inner.split_once(']') else {
        return false;
    };
    let Some((secs, micros)) = stamp.trim_start().split_once('.') else {
        return false;
    };
    !secs.is_empty()
        && secs.bytes().all(|b| b.is_ascii_digit())
        && micros.len() == 6
        && micros.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `key` is one of the rig's own (`RIG-…`, `GUEST-…`).
fn is_marked_key(key: &str) -> bool {
    key.starts_with("RIG-") || key.starts_with("GUEST-")
}

/// Where, inside `value`, a `RIG-…=` or `GUEST-…=` key (upper case, digits, dashes) glued to a
/// lower-case letter or digit starts.
fn marked_key_inside(value: &str) -> Option<usize> {
    let bytes = value.as_bytes();
    (1..value.len()).find(|&i| {
        let before = bytes[i - 1];
        let tail = &value[i..];
        (before.is_ascii_lowercase() || before.is_ascii_digit())
            && is_marked_key(tail)
            && tail.find('=').is_some_and(|eq| {
                tail[..eq]
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
            })
    })
}

impl RigRun {
    /// The last value of `KEY=value` in the log.
    pub fn value(&self, key: &str) -> Option<&str> {
        values_in(&self.log, key).last().map(|&(_, v)| v)
    }

    /// Every value of `KEY=value` in the log, in order.
    pub fn values(&self, key: &str) -> Vec<&str> {
        values_in(&self.log, key)
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// Where in the log (a byte offset into the cleaned lines) `KEY=` first appears.
    pub fn position(&self, key: &str) -> Option<usize> {
        values_in(&self.log, key).first().map(|&(p, _)| p)
    }

    /// Whether the console printed `text`, also when a `RIG-`/`GUEST-` line or a kernel
    /// message landed in the middle of it (see [`without_inserted_lines`]).
    pub fn console_printed(&self, text: &str) -> bool {
        self.log.contains(text) || without_inserted_lines(&self.log).contains(text)
    }

    /// A `GUEST-<name>=` value the guest's init printed, e.g. `guest("MARKER")`.
    pub fn guest(&self, name: &str) -> Option<&str> {
        self.value(&format!("GUEST-{name}"))
    }

    /// Online CPUs the guest counted.
    pub fn guest_cpus(&self) -> Option<u32> {
        self.guest("CPUS")?.parse().ok()
    }

    /// The guest's `MemTotal` in KiB.
    pub fn guest_memtotal_kb(&self) -> Option<u64> {
        self.guest("MEMTOTAL-KB")?.parse().ok()
    }

    /// The `viaduct_marker=` the guest found on its command line.
    pub fn guest_marker(&self) -> Option<&str> {
        self.guest("MARKER")
    }

    /// The status the scenario script exited with, as the rig host reported it.
    pub fn scenario_exit(&self) -> Option<i32> {
        self.value("RIG-SCENARIO-EXIT")?.parse().ok()
    }

    /// viaduct's exit status, from the `VIADUCT-EXIT=` line of [`viaduct_command`].
    pub fn viaduct_exit(&self) -> Option<i32> {
        self.value("VIADUCT-EXIT")?.parse().ok()
    }

    /// What viaduct wrote to stderr, one entry per line (scenarios from [`viaduct_command`]).
    pub fn viaduct_stderr(&self) -> Vec<&str> {
        clean_lines(&self.log)
            .filter_map(|line| line.split_once(VIADUCT_STDERR_PREFIX).map(|(_, rest)| rest))
            .collect()
    }

    /// The last `lines` lines of the log.
    pub fn tail(&self, lines: usize) -> String {
        let all: Vec<&str> = clean_lines(&self.log).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Text to append to an assertion message: the log's path and its tail.
    pub fn context(&self) -> String {
        let mut text = String::new();
        let _ = write!(
            text,
            "--- last 60 lines of {} ---\n{}\n--- end of log ---",
            self.log_path.display(),
            self.tail(60)
        );
        text
    }
}

// ---------------------------------------------------------------------------------------------
// Passthrough: devices of the rig host (L1 QEMU devices that L2 hands to viaduct with VFIO)
// ---------------------------------------------------------------------------------------------

/// QEMU's NVMe controller, as `vendor:device` in the rig host and in the guest.
pub const NVME_ID: &str = "1b36:0010";
/// QEMU's ivshmem device.
pub const IVSHMEM_ID: &str = "1af4:1110";
/// QEMU's `edu` device (a 1 MiB 32-bit BAR0 and a DMA engine).
pub const EDU_ID: &str = "1234:11e8";
/// The rig host's PCI slots (on its root bus, `0000:00:<slot>.0`) for the devices below. They do
/// not collide with q35's own devices (00.0 host bridge, 1f.x LPC/SATA/SMBus).
pub const SLOT_NVME_A: u8 = 0x10;
pub const SLOT_NVME_B: u8 = 0x11;
pub const SLOT_IVSHMEM: u8 = 0x12;
pub const SLOT_BRIDGE: u8 = 0x13;
pub const SLOT_EDU: u8 = 0x14;
/// Size of the NVMe disk images the tests create.
pub const NVME_DISK_BYTES: u64 = 64 << 20;

/// The rig host's (L2's) PCI address for slot `slot` on its root bus.
pub fn host_bdf(slot: u8) -> String {
    format!("0000:00:{slot:02x}.0")
}

/// The `--device` value `path=/sys/bus/pci/devices/<bdf>/` for host device `bdf`; options such
/// as `,pci_segment=1` go after it.
pub fn device_path(bdf: &str) -> String {
    format!("path=/sys/bus/pci/devices/{bdf}/")
}

/// The rig host of one test: its directory (`target/rig/<test>`, emptied on creation), the L1
/// QEMU devices it gets and the files behind them. Devices sit at fixed PCI addresses, so the
/// BDFs in L2 are known in advance (see [`SLOT_NVME_A`] and friends).
pub struct RigHost {
    test_name: String,
    dir: PathBuf,
    qemu_args: Vec<String>,
}

/// An NVMe controller of the rig host with its raw disk image on this machine.
pub struct NvmeDisk {
    /// Its address in the rig host, e.g. `0000:00:10.0`.
    pub bdf: String,
    /// The disk image (a sparse file of [`NVME_DISK_BYTES`]).
    pub image: PathBuf,
    /// The token written at sector 0 before the run.
    pub marker: String,
}

impl NvmeDisk {
    /// The bytes of 512-byte sector `n` of the image as it is now.
    pub fn sector(&self, n: u64) -> Vec<u8> {
        read_at(&self.image, n * 512, 512)
    }

    /// The leading token of sector `n`: bytes up to the first NUL or non-token character.
    pub fn token_at(&self, n: u64) -> String {
        leading_token(&self.sector(n))
    }
}

/// An ivshmem-plain device of the rig host: BAR2 is the shared memory in `file` on this machine.
pub struct Ivshmem {
    pub bdf: String,
    /// The memory backend's file: offset `x` of the file is offset `x` of BAR2.
    pub file: PathBuf,
    pub size: u64,
}

impl Ivshmem {
    /// `len` bytes of the shared memory at `offset`.
    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        read_at(&self.file, offset, len)
    }
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file =
        fs::File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    file.seek(SeekFrom::Start(offset)).expect("seek");
    let mut buf = vec![0; len];
    file.read_exact(&mut buf).unwrap_or_else(|e| {
        panic!(
            "cannot read {len} bytes at {offset:#x} of {}: {e}",
            path.display()
        )
    });
    buf
}

/// The leading run of token characters (`A-Za-z0-9._=-`) of `bytes`, as the guest's
/// `read_token` prints it.
pub fn leading_token(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || b"._=-".contains(b))
        .map(|&b| b as char)
        .collect()
}

impl RigHost {
    /// A rig host without extra devices; empties `target/rig/<test_name>`.
    pub fn new(test_name: &str) -> Self {
        RigHost {
            test_name: test_name.to_string(),
            dir: fresh_rig_dir(test_name),
            qemu_args: Vec::new(),
        }
    }

    /// The test's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Gives the rig host `size` of memory (a QEMU `-m` value such as `3072M`) instead of
    /// the default 2 GiB.
    pub fn memory(&mut self, size: &str) -> &mut Self {
        self.qemu_args(["-m".to_string(), size.to_string()])
    }

    /// Adds raw QEMU arguments for L1.
    pub fn qemu_args<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, args: I) -> &mut Self {
        self.qemu_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Creates `<dir>/<name>.img` ([`NVME_DISK_BYTES`], sparse) with `marker` at sector 0.
    fn disk_image(&self, name: &str, marker: &str) -> PathBuf {
        let image = self.dir.join(format!("{name}.img"));
        let file = fs::File::create(&image)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", image.display()));
        file.set_len(NVME_DISK_BYTES).expect("size the disk image");
        use std::os::unix::fs::FileExt;
        file.write_all_at(marker.as_bytes(), 0)
            .expect("write the marker");
        image
    }

    /// Adds an NVMe controller `name` on the rig host's bus `bus` (`pcie.0` or a bridge id) at
    /// device `slot`, backed by a fresh image with `marker` at sector 0.
    fn nvme_on(&mut self, name: &str, bus: &str, slot: u8, bdf: String, marker: &str) -> NvmeDisk {
        let image = self.disk_image(name, marker);
        self.qemu_args([
            "-drive".to_string(),
            format!("file={},if=none,id={name},format=raw", image.display()),
            "-device".to_string(),
            format!("nvme,drive={name},serial={name},bus={bus},addr={slot:#x}"),
        ]);
        NvmeDisk {
            bdf,
            image,
            marker: marker.to_string(),
        }
    }

    /// Adds an NVMe controller at `0000:00:<slot>.0` whose disk has `marker` at sector 0.
    pub fn nvme(&mut self, name: &str, slot: u8, marker: &str) -> NvmeDisk {
        self.nvme_on(name, "pcie.0", slot, host_bdf(slot), marker)
    }

    /// Adds an ivshmem-plain device at `0000:00:<slot>.0` whose BAR2 is `size` bytes of shared
    /// memory in `<dir>/<name>.mem` (a sparse file on this machine).
    pub fn ivshmem(&mut self, name: &str, slot: u8, size: u64) -> Ivshmem {
        let file = self.dir.join(format!("{name}.mem"));
        fs::File::create(&file)
            .and_then(|f| f.set_len(size))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", file.display()));
        self.qemu_args([
            "-object".to_string(),
            format!(
                "memory-backend-file,id={name},mem-path={},size={size},share=on",
                file.display()
            ),
            "-device".to_string(),
            format!("ivshmem-plain,memdev={name},bus=pcie.0,addr={slot:#x}"),
        ]);
        Ivshmem {
            bdf: host_bdf(slot),
            file,
            size,
        }
    }

    /// Adds QEMU's `edu` device at `0000:00:<slot>.0` (1 MiB 32-bit BAR0; its DMA engine sees
    /// all 64 address bits) and returns its BDF in the rig host.
    pub fn edu(&mut self, slot: u8) -> String {
        self.qemu_args([
            "-device".to_string(),
            format!("edu,dma_mask=0xffffffffffffffff,bus=pcie.0,addr={slot:#x}"),
        ]);
        host_bdf(slot)
    }

    /// Adds a conventional PCI bridge at `0000:00:<slot>.0` with two NVMe controllers behind
    /// it, `0000:01:01.0` and `0000:01:02.0` (bus 1: it must be the rig host's only bridge).
    /// Devices behind a conventional bridge share one IOMMU group with it: passing one of them
    /// through alone is the "group not viable" case.
    pub fn bridge_with_two_nvmes(&mut self, slot: u8, markers: [&str; 2]) -> [NvmeDisk; 2] {
        self.qemu_args([
            "-device".to_string(),
            format!("pci-bridge,id=br0,chassis_nr=1,bus=pcie.0,addr={slot:#x}"),
        ]);
        [
            self.nvme_on("nvbr1", "br0", 1, "0000:01:01.0".into(), markers[0]),
            self.nvme_on("nvbr2", "br0", 2, "0000:01:02.0".into(), markers[1]),
        ]
    }

    /// Runs `scenario` in this rig host (see [`run_rig`]).
    pub fn run(&self, scenario: &str) -> RigRun {
        run_rig_with(&self.test_name, scenario, &self.qemu_args)
    }
}

/// Scenario lines that hand `devices` (BDFs or vendor:device) of the rig host to vfio-pci with
/// `rig-vfio-bind` (`resources/rig/vfio-bind.sh`), which prints `RIG-VFIO-DEVICE=` and
/// `RIG-VFIO-GROUP=` lines. `host_devices` are only reported, left on their host driver. A
/// failed bind prints `RIG-ERROR:`, which fails the rig run.
pub fn vfio_bind(devices: &[&str], host_devices: &[&str]) -> String {
    let mut line = format!("rig-vfio-bind {}", devices.join(" "));
    if !host_devices.is_empty() {
        let _ = write!(line, " --host {}", host_devices.join(" "));
    }
    format!("{line} || exit 1\n")
}

/// Scenario lines that print `RIG-L2-NVME-MARKER=<bdf>,<token>`: the token at sector 0 of the
/// rig host's NVMe `bdf`, read through the rig host's own nvme driver (before it is unbound).
pub fn l2_nvme_marker(bdf: &str) -> String {
    format!(
        "for ns in /sys/bus/pci/devices/{bdf}/nvme/nvme*/nvme*n1; do \
         echo \"RIG-L2-NVME-MARKER={bdf},$(dd if=/dev/${{ns##*/}} bs=512 count=1 2>/dev/null | \
         tr '\\000' '\\n' | head -n1)\"; done\n"
    )
}

/// One PCI device as the guest reported it (`GUEST-PCIDEV=`), with its BARs (`GUEST-BAR=`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestPciDevice {
    pub bdf: String,
    /// `vendor:device`, hex.
    pub id: String,
    pub class: u32,
    pub bars: Vec<GuestBar>,
}

impl GuestPciDevice {
    /// The PCI domain (segment).
    pub fn domain(&self) -> u16 {
        u16::from_str_radix(&self.bdf[..4], 16).expect("hex domain")
    }
}

/// One resource of a guest PCI device: BAR `index` (0–5, 6 is the ROM) at `start..=end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestBar {
    pub index: u8,
    pub start: u64,
    pub end: u64,
    pub flags: u64,
}

impl GuestBar {
    pub fn size(&self) -> u64 {
        self.end - self.start + 1
    }
}

fn parse_hex(text: &str) -> Option<u64> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).ok()
}

/// A capability in a standard PCI capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciCapability {
    pub offset: u8,
    pub id: u8,
}

/// Walks the capability list of a 256-byte config space dump from the pointer at 0x34, checking
/// it as a device must present it: the status register announces the list, every pointer is
/// dword aligned and inside 0x40..0x100, no capability is visited twice, and it ends with 0.
pub fn pci_capabilities(config: &[u8]) -> Result<Vec<PciCapability>, String> {
    if config.len() < 256 {
        return Err(format!(
            "config space dump is {} bytes, not 256",
            config.len()
        ));
    }
    if config[0x06] & 0x10 == 0 {
        return Err("status register bit 4 (capabilities list) is clear".into());
    }
    let mut caps = Vec::new();
    let mut seen = [false; 256];
    let mut ptr = config[0x34];
    while ptr != 0 {
        if ptr < 0x40 || ptr & 3 != 0 {
            return Err(format!(
                "capability pointer {ptr:#04x} is not a dword in 0x40..0x100"
            ));
        }
        if std::mem::replace(&mut seen[ptr as usize], true) {
            return Err(format!("capability list loops back to {ptr:#04x}"));
        }
        caps.push(PciCapability {
            offset: ptr,
            id: config[ptr as usize],
        });
        ptr = config[ptr as usize + 1];
    }
    Ok(caps)
}

impl RigRun {
    /// The part of the log that belongs to each viaduct run of a scenario (from one
    /// `RIG-VIADUCT-START` line, which [`viaduct_command`] prints, to the next), so that the
    /// usual accessors work on one run of several.
    pub fn viaduct_runs(&self) -> Vec<RigRun> {
        let starts: Vec<usize> = self
            .log
            .match_indices("RIG-VIADUCT-START")
            .map(|(i, _)| i)
            .collect();
        starts
            .iter()
            .enumerate()
            .map(|(n, &start)| {
                let end = starts.get(n + 1).copied().unwrap_or(self.log.len());
                RigRun {
                    log: self.log[start..end].to_string(),
                    log_path: self.log_path.clone(),
                    seconds: self.seconds,
                }
            })
            .collect()
    }

    /// How long the (first) viaduct run took on the rig host's clock: from its
    /// `RIG-VIADUCT-START uptime=` line to its `VIADUCT-EXIT=<n> uptime=` line.
    pub fn viaduct_seconds(&self) -> Option<f64> {
        let uptime_on = |marker: &str| {
            clean_lines(&self.log)
                .find(|l| l.contains(marker))
                .and_then(|l| l.split_once("uptime="))
                .and_then(|(_, v)| v.split_whitespace().next()?.parse::<f64>().ok())
        };
        Some(uptime_on("VIADUCT-EXIT=")? - uptime_on("RIG-VIADUCT-START")?)
    }

    /// Lines the guest printed (`GUEST-…` outside viaduct's stderr): empty when no guest ran.
    pub fn guest_lines(&self) -> Vec<&str> {
        clean_lines(&self.log)
            .filter(|line| line.contains("GUEST-") && !line.contains(VIADUCT_STDERR_PREFIX))
            .collect()
    }

    /// viaduct's exit statistics: the `key=<n>` pairs of its `viaduct vCPU exits: mmio=<n> …`
    /// line on stderr (printed at exit with `-v`).
    pub fn vcpu_exits(&self) -> Option<Vec<(String, u64)>> {
        let stderr = self.viaduct_stderr();
        let line = stderr.iter().rev().find(|l| l.contains("vCPU exits:"))?;
        let (_, rest) = line.split_once("vCPU exits:")?;
        Some(
            rest.split(|c: char| c.is_whitespace() || c == ',')
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k.to_string(), v.parse().ok()?))
                })
                .collect(),
        )
    }

    /// One counter of [`RigRun::vcpu_exits`], e.g. `vcpu_exit_count("mmio")`.
    pub fn vcpu_exit_count(&self, kind: &str) -> Option<u64> {
        self.vcpu_exits()?
            .into_iter()
            .find(|(k, _)| k == kind)
            .map(|(_, v)| v)
    }

    /// The guest's PCI devices with their BARs.
    pub fn guest_pci_devices(&self) -> Vec<GuestPciDevice> {
        let mut devices: Vec<GuestPciDevice> = self
            .values("GUEST-PCIDEV")
            .iter()
            .filter_map(|v| {
                let mut f = v.split(',');
                Some(GuestPciDevice {
                    bdf: f.next()?.to_string(),
                    id: f.next()?.to_string(),
                    class: parse_hex(f.next()?)? as u32,
                    bars: Vec::new(),
                })
            })
            .collect();
        for v in self.values("GUEST-BAR") {
            let f: Vec<&str> = v.split(',').collect();
            if f.len() != 5 {
                continue;
            }
            let (Ok(index), Some(start), Some(end), Some(flags)) = (
                f[1].parse(),
                parse_hex(f[2]),
                parse_hex(f[3]),
                parse_hex(f[4]),
            ) else {
                continue;
            };
            if let Some(dev) = devices.iter_mut().find(|d| d.bdf == f[0]) {
                dev.bars.push(GuestBar {
                    index,
                    start,
                    end,
                    flags,
                });
            }
        }
        devices
    }

    /// The guest's devices with `vendor:device` `id`.
    pub fn guest_devices_with_id(&self, id: &str) -> Vec<GuestPciDevice> {
        self.guest_pci_devices()
            .into_iter()
            .filter(|d| d.id == id)
            .collect()
    }

    /// The config space bytes 0x00–0xff the guest dumped (`viaduct_dump_config=`).
    pub fn guest_config_space(&self) -> Option<Vec<u8>> {
        let hex = self.guest("CONFIG")?;
        if hex.len() != 512 {
            return None;
        }
        (0..256)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
            .collect()
    }

    /// The guest's root-bridge memory windows (`GUEST-PCI-MEM=dddd:start-end`) of `domain`.
    pub fn guest_pci_mem_windows(&self, domain: u16) -> Vec<(u64, u64)> {
        self.values("GUEST-PCI-MEM")
            .iter()
            .filter_map(|v| {
                let (d, range) = v.split_once(':')?;
                let (start, end) = range.split_once('-')?;
                (u16::from_str_radix(d, 16).ok()? == domain)
                    .then_some((parse_hex(start)?, parse_hex(end)?))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Disks: virtio block devices of the rig host (L2's /dev/vdX), which viaduct uses as raw disks
// with --disk path=/dev/vdX, and the rig's Debian cloud image (resources/cloud-image/)
// ---------------------------------------------------------------------------------------------

/// The rig host's PCI slot of its first virtio disk; the n-th disk a test adds sits at slot
/// `SLOT_VIRTIO_DISK_FIRST + n`, and L2's virtio_blk names the disks in PCI order, so the n-th
/// disk is `/dev/vd<a + n>` in L2. Slots 0x08–0x0f do not collide with the passthrough slots.
pub const SLOT_VIRTIO_DISK_FIRST: u8 = 0x08;
/// How many virtio disks a rig host can have (slots 0x08–0x0f).
pub const MAX_VIRTIO_DISKS: usize = 8;

/// How L1 QEMU backs one of the rig host's virtio disks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostDiskMode {
    /// Read-write: the rig host's writes (and its guest's) reach the file on this machine.
    ReadWrite,
    /// Read-only in the rig host too (`/sys/block/vdX/ro` = 1): nothing can change the file.
    ReadOnly,
    /// Writes go to a temporary overlay that QEMU drops at exit (`snapshot=on`): the file, e.g.
    /// the cached cloud image, is never changed, and runs can share it.
    Snapshot,
}

/// A virtio disk of the rig host: `/dev/<name>` in L2, backed by `image` on this machine.
pub struct HostDisk {
    /// The block device's name in L2, e.g. `vda`.
    pub name: String,
    /// Its serial (`/sys/block/<name>/serial` in L2), which the scenario checks.
    pub serial: String,
    pub image: PathBuf,
    pub mode: HostDiskMode,
}

impl HostDisk {
    /// `/dev/<name>`, the path viaduct gets with `--disk path=…`.
    pub fn dev(&self) -> String {
        format!("/dev/{}", self.name)
    }

    /// `len` bytes of the image at `offset`, as the file is now.
    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        read_at(&self.image, offset, len)
    }

    /// The leading token of 512-byte sector `n` of the image.
    pub fn token_at(&self, n: u64) -> String {
        leading_token(&self.read(n * 512, 512))
    }

    /// The image's size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        fs::metadata(&self.image)
            .unwrap_or_else(|e| panic!("cannot stat {}: {e}", self.image.display()))
            .len()
            / 512
    }
}

impl RigHost {
    /// How many virtio disks were added so far (each is one `virtio-blk-pci` device).
    fn virtio_disk_count(&self) -> usize {
        self.qemu_args
            .iter()
            .filter(|a| a.starts_with("virtio-blk-pci,"))
            .count()
    }

    /// Gives the rig host a virtio disk backed by `image`: the first one added is `/dev/vda` in
    /// L2, the next `/dev/vdb`, and so on (fixed PCI slots from [`SLOT_VIRTIO_DISK_FIRST`]).
    /// `serial` (≤ 20 characters) is what the scenario from [`rig_disk_check`] verifies.
    pub fn virtio_disk(&mut self, serial: &str, image: &Path, mode: HostDiskMode) -> HostDisk {
        let n = self.virtio_disk_count();
        assert!(
            n < MAX_VIRTIO_DISKS,
            "at most {MAX_VIRTIO_DISKS} virtio disks"
        );
        assert!(
            serial.len() <= 20,
            "a virtio-blk serial has at most 20 bytes"
        );
        let id = format!("vd{n}");
        let mode_opts = match mode {
            HostDiskMode::ReadWrite => "",
            HostDiskMode::ReadOnly => ",readonly=on",
            HostDiskMode::Snapshot => ",snapshot=on",
        };
        self.qemu_args([
            "-drive".to_string(),
            format!(
                "file={},if=none,id={id},format=raw{mode_opts}",
                image.display()
            ),
            "-device".to_string(),
            format!(
                "virtio-blk-pci,drive={id},serial={serial},bus=pcie.0,addr={:#x}",
                SLOT_VIRTIO_DISK_FIRST as usize + n
            ),
        ]);
        HostDisk {
            name: format!("vd{}", (b'a' + n as u8) as char),
            serial: serial.to_string(),
            image: image.to_path_buf(),
            mode,
        }
    }

    /// Creates `<dir>/<name>.img`, `bytes` long (sparse, all zeros, or `marker` at sector 0 if
    /// not empty), and adds it as the next virtio disk (see [`RigHost::virtio_disk`]); `name` is
    /// its serial too.
    pub fn new_virtio_disk(
        &mut self,
        name: &str,
        bytes: u64,
        marker: &str,
        mode: HostDiskMode,
    ) -> HostDisk {
        let image = self.dir.join(format!("{name}.img"));
        let file = fs::File::create(&image)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", image.display()));
        file.set_len(bytes).expect("size the disk image");
        use std::os::unix::fs::FileExt;
        file.write_all_at(marker.as_bytes(), 0)
            .expect("write the marker");
        self.virtio_disk(name, &image, mode)
    }

    /// Runs `scenario` in this rig host with `files` put into it (see [`run_rig_with_files`]).
    pub fn run_with_files(&self, scenario: &str, files: &[(PathBuf, String)]) -> RigRun {
        run_rig_with_files(&self.test_name, scenario, files, &self.qemu_args)
    }
}

/// [`viaduct_command`] with its own bound of `timeout_secs` instead of
/// [`VIADUCT_TIMEOUT_SECS`], for guests that take longer (the cloud image boots systemd and
/// cloud-init under nested emulation). Keep it well inside the rig's timeout.
pub fn viaduct_command_with_timeout(args: &str, timeout_secs: u64) -> String {
    viaduct_command(args).replace(
        &format!("rig-bounded {VIADUCT_TIMEOUT_SECS} "),
        &format!("rig-bounded {timeout_secs} "),
    )
}

/// Scenario lines that check the rig host's virtio disks before viaduct runs: each `/dev/<name>`
/// exists and has the expected serial. Prints `RIG-DISK=<name>,<sectors>,<ro>,<serial>` per
/// disk; a missing or misnamed disk prints `RIG-ERROR: …`, which fails the rig run.
pub fn rig_disk_check(disks: &[&HostDisk]) -> String {
    let mut lines = String::new();
    for disk in disks {
        let name = &disk.name;
        let serial = &disk.serial;
        let _ = writeln!(
            lines,
            "if [ -b /dev/{name} ] && [ \"$(cat /sys/block/{name}/serial 2>/dev/null)\" = {serial} ]; then \
             echo \"RIG-DISK={name},$(cat /sys/block/{name}/size),$(cat /sys/block/{name}/ro),{serial}\"; \
             else echo \"RIG-ERROR: the rig host has no /dev/{name} with serial {serial} \
             (disks: $(cd /sys/block && echo vd*); is virtio_blk loaded? see RIG-NOTE lines)\"; exit 1; fi"
        );
    }
    lines
}

/// The rig's Debian 12 cloud image, built and cached by `resources/cloud-image/build.sh`.
pub struct CloudImage {
    /// The raw disk (GPT, root filesystem on partition 1). Shared by every test: give it to the
    /// rig host with [`HostDiskMode::Snapshot`] so that no run changes it.
    pub disk: PathBuf,
    /// The image's kernel and initrd, for direct kernel boot.
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The kernel version, e.g. `6.1.0-37-cloud-amd64`.
    pub version: String,
}

/// Where the cloud image's kernel and initrd go in the rig host.
pub const CLOUD_KERNEL_IN_L2: &str = "/guest/cloud/vmlinuz";
pub const CLOUD_INITRD_IN_L2: &str = "/guest/cloud/initrd.img";
/// The guest command line that boots the cloud image from its first disk, with `quiet` (every
/// console byte crosses two levels of virtualization) unless `VIADUCT_RIG_GUEST_VERBOSE=1`.
pub fn cloud_cmdline() -> &'static str {
    match std::env::var("VIADUCT_RIG_GUEST_VERBOSE").as_deref() {
        Ok("1") => "console=ttyS0 root=/dev/vda1 rw",
        _ => "console=ttyS0 root=/dev/vda1 rw quiet",
    }
}

/// Builds the cloud image if the cache does not hold an up-to-date one (minutes, once per
/// machine; see docs/cloud-images.md) and returns it. Panics with the build's output on failure.
pub fn cloud_image() -> CloudImage {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(repo.join("resources/cloud-image/build.sh"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run resources/cloud-image/build.sh: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        panic!(
            "resources/cloud-image/build.sh failed ({}):\n{}",
            out.status,
            stderr.trim_end()
        );
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    eprintln!(
        "cloud image ready in {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    let version = fs::read_to_string(dir.join("VERSION"))
        .unwrap_or_else(|e| panic!("no VERSION in {}: {e}", dir.display()))
        .trim()
        .to_string();
    CloudImage {
        disk: dir.join("disk.raw"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        version,
    }
}

impl CloudImage {
    /// The `(source, destination)` pairs that put the kernel and initrd into the rig host.
    pub fn files_for_l2(&self) -> Vec<(PathBuf, String)> {
        vec![
            (self.kernel.clone(), CLOUD_KERNEL_IN_L2.to_string()),
            (self.initrd.clone(), CLOUD_INITRD_IN_L2.to_string()),
        ]
    }
}

/// What the cloud guest's user-data does (`resources/cloud-image/user-data.sh`).
#[derive(Clone, Debug, Default)]
pub struct CloudUserData {
    /// Printed by runcmd as `GUEST-CLOUD-MARKER=<marker>`.
    pub marker: String,
    /// Written to a file by write_files and reported back as `GUEST-CLOUD-FILE=<file_token>`.
    pub file_token: String,
    /// A disk (e.g. `vdc`) whose first sector the guest overwrites with the marker.
    pub blank: Option<String>,
    /// A disk (e.g. `vdd`) the guest tries to write to.
    pub readonly: Option<String>,
    /// Where the guest writes its `GUEST-` lines: `ttyS0` when `None`, `hvc0` for the virtio
    /// console.
    pub console: Option<String>,
    /// A NIC the seed's network-config sets up, and the HTTP exchange over it.
    pub net: Option<CloudNet>,
}

/// The cloud guest's NIC: network-config gives the NIC with `mac` the address `guest_cidr`; the
/// guest serves `guest-<token>` on port 8080 and fetches `host.txt` from `host_ip:8080`.
#[derive(Clone, Debug)]
pub struct CloudNet {
    /// The NIC's MAC (`--net …,mac=`), which network-config matches.
    pub mac: String,
    /// The guest's address with its prefix, e.g. `169.254.10.2/16`.
    pub guest_cidr: String,
    /// The rig host's end (the tap's `ip=`).
    pub host_ip: String,
    /// What the guest serves, as `guest-<token>`.
    pub token: String,
}

impl CloudNet {
    /// The guest's address without its prefix.
    pub fn guest_ip(&self) -> &str {
        self.guest_cidr
            .split('/')
            .next()
            .unwrap_or(&self.guest_cidr)
    }
}

/// Writes a NoCloud seed disk (vfat, label `cidata`) for `user_data` to `<dir>/seed.img`, with
/// a fresh instance-id, and returns its path.
pub fn cloud_seed(dir: &Path, user_data: &CloudUserData) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut args = vec![
        "--marker".to_string(),
        user_data.marker.clone(),
        "--file".to_string(),
        user_data.file_token.clone(),
    ];
    if let Some(dev) = &user_data.blank {
        args.extend(["--blank".to_string(), dev.clone()]);
    }
    if let Some(dev) = &user_data.readonly {
        args.extend(["--readonly".to_string(), dev.clone()]);
    }
    if let Some(dev) = &user_data.console {
        args.extend(["--console".to_string(), dev.clone()]);
    }
    if let Some(net) = &user_data.net {
        args.extend([
            "--net".to_string(),
            format!("{},{},{}", net.guest_ip(), net.host_ip, net.token),
        ]);
    }
    let out = Command::new("bash")
        .arg(repo.join("resources/cloud-image/user-data.sh"))
        .args(&args)
        .output()
        .expect("run resources/cloud-image/user-data.sh");
    assert!(
        out.status.success(),
        "user-data.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let user_data_path = dir.join("user-data");
    fs::write(&user_data_path, &out.stdout).expect("write user-data");
    let meta_data_path = dir.join("meta-data");
    fs::write(
        &meta_data_path,
        format!(
            "instance-id: iid-{}\nlocal-hostname: viaduct-cloud\n",
            marker_token()
        ),
    )
    .expect("write meta-data");
    let seed = dir.join("seed.img");
    let mut seed_sh = Command::new("bash");
    seed_sh
        .arg(repo.join("resources/cloud-image/seed.sh"))
        .arg(&seed)
        .arg(&user_data_path)
        .arg(&meta_data_path);
    if let Some(net) = &user_data.net {
        // NoCloud network-config, version 2: the NIC found by its MAC, a static address.
        let network_config = dir.join("network-config");
        fs::write(
            &network_config,
            format!(
                "version: 2\nethernets:\n  rig0:\n    match:\n      macaddress: \"{}\"\n    \
                 addresses: [{}]\n",
                net.mac, net.guest_cidr
            ),
        )
        .expect("write network-config");
        seed_sh.arg(&network_config);
    }
    let out = seed_sh.output().expect("run resources/cloud-image/seed.sh");
    assert!(
        out.status.success(),
        "seed.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    seed
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "RIG-L2-INIT uptime=3.1\r\n\
        GUEST-CPUS-ONLINE=0-1\r\r\n\
        [    5.1] GUEST-CPUS=2\r\n\
        XGUEST-MARKER=wrong\r\n\
        GUEST-MARKER=abc123\r\n\
        VIADUCT-STDERR| [INFO vmm] guest asked to reboot\r\n\
        VIADUCT-EXIT=0 uptime=20.5\r\n\
        RIG-SCENARIO-EXIT=0 uptime=20.6\r\n";

    fn run() -> RigRun {
        RigRun {
            log: LOG.to_string(),
            log_path: PathBuf::from("x"),
            seconds: 0.0,
        }
    }

    #[test]
    fn a_line_landing_inside_another_is_split_at_its_key() {
        // rig_qcow2, 2026-12-03: the rig host's line landed before the guest's newline.
        let text = "GUEST-NET-FROM-HOST=host-m732a91208a81003fRIG-NET-FROM-GUEST=guest-m99f4\r\n\
                    GUEST-X=ABCGUEST-Y=1 GUEST-Z=aRIG-lower=2 xGUEST-CPUS-ONLINE=0-1\n";
        assert_eq!(
            values_in(text, "GUEST-NET-FROM-HOST"),
            vec![(0, "host-m732a91208a81003f")]
        );
        assert_eq!(
            values_in(text, "RIG-NET-FROM-GUEST"),
            vec![(42, "guest-m99f4")]
        );
        // An upper-case tail is a longer name, not another line; a value holding "RIG-" without
        // an upper-case key after it stays whole; the suffix rule still holds for glued keys.
        assert_eq!(values_in(text, "GUEST-X"), vec![(73, "ABCGUEST-Y=1")]);
        assert!(values_in(text, "GUEST-Y").is_empty());
        assert_eq!(values_in(text, "GUEST-Z"), vec![(94, "aRIG-lower=2")]);
        assert!(values_in(text, "GUEST-CPUS").is_empty());
        assert_eq!(values_in(text, "GUEST-CPUS-ONLINE").len(), 1);
        assert!(values_in(text, "NET-FROM-HOST").is_empty());
    }

    #[test]
    fn a_prompt_split_by_another_writer_reads_whole() {
        // rig_qcow2, 2026-12-04 (CI): the guest's line landed inside agetty's prompt.
        let text = "Debian GNU/Linux 12 viaduct-cloud hvc0\r\n\r\nviaduct-cloud GUEST-NET-IF=\
                    enp0s5,52:54:00:0a:00:02,virtio_net,169.254.10.2/16\r\nlogin: [   34.492983] \
                    cloud-init[327]: Running as unit: viaduct-rig-www.service\r\nGUEST-X=1\n";
        let whole = without_inserted_lines(text);
        assert!(whole.contains("viaduct-cloud login: "), "{whole:?}");
        assert!(
            !whole.contains("GUEST-") && !whole.contains("cloud-init[327]"),
            "{whole:?}"
        );
        assert!(
            whole.contains("hvc0\r\n\r\n"),
            "lines of its own stay: {whole:?}"
        );
        // A kernel message at a line's start goes too; brackets that are not one stay, and so
        // does a longer name ending in a marked key.
        let other = "[ 1.000001] x\n[1.5] y [12.34567] XGUEST-A=1 cloud-init[300]: z\n";
        assert_eq!(
            without_inserted_lines(other),
            "[1.5] y [12.34567] XGUEST-A=1 cloud-init[300]: z\n"
        );
        let run = RigRun {
            log: text.to_string(),
            log_path: PathBuf::from("x"),
            seconds: 0.0,
        };
        assert!(run.console_printed("viaduct-cloud login:"));
        assert!(!run.console_printed("viaduct-cloud hvc0 login:"));
    }

    #[test]
    fn values_ignore_longer_keys_and_carriage_returns() {
        let run = run();
        assert_eq!(run.guest_cpus(), Some(2));
        assert_eq!(run.guest("CPUS-ONLINE"), Some("0-1"));
        assert_eq!(run.guest_marker(), Some("abc123"));
        assert_eq!(run.values("GUEST-MARKER"), vec!["abc123"]);
        assert_eq!(run.viaduct_exit(), Some(0));
        assert_eq!(run.scenario_exit(), Some(0));
        assert!(run.position("GUEST-MARKER") < run.position("VIADUCT-EXIT"));
        assert_eq!(
            run.viaduct_stderr(),
            vec!["[INFO vmm] guest asked to reboot"]
        );
    }

    #[test]
    fn runs_split_and_exit_counts_parse() {
        let run = RigRun {
            log: "RIG-VIADUCT-START uptime=1\nGUEST-MARKER=a\n\
                  VIADUCT-STDERR| [INFO] viaduct vCPU exits: mmio=12 pio=3400 hlt=7\n\
                  VIADUCT-EXIT=0 uptime=13.5\nRIG-VIADUCT-START uptime=20.25\n\
                  VIADUCT-STDERR| error: GUEST-nothing\nVIADUCT-EXIT=1 uptime=21\n"
                .to_string(),
            log_path: PathBuf::from("x"),
            seconds: 0.0,
        };
        let runs = run.viaduct_runs();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].vcpu_exit_count("mmio"), Some(12));
        assert_eq!(runs[0].vcpu_exit_count("pio"), Some(3400));
        assert_eq!(runs[0].guest_marker(), Some("a"));
        assert_eq!(runs[1].viaduct_exit(), Some(1));
        assert!(runs[1].guest_lines().is_empty());
        assert_eq!(runs[1].vcpu_exits(), None);
        assert_eq!(runs[0].viaduct_seconds(), Some(12.5));
        assert_eq!(runs[1].viaduct_seconds(), Some(0.75));
    }

    #[test]
    fn guest_pci_report_parses() {
        let run = RigRun {
            log: "GUEST-PCI-MEM=0001:c0000000-cfffffff\r\n\
                  GUEST-PCIDEV=0001:00:01.0,1b36:0010,0x010802\r\n\
                  GUEST-BAR=0001:00:01.0,0,0x00000000c0000000,0x00000000c0003fff,0x0000000000140204\r\n"
                .to_string(),
            log_path: PathBuf::from("x"),
            seconds: 0.0,
        };
        let devs = run.guest_devices_with_id("1b36:0010");
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0].domain(), 1);
        assert_eq!(devs[0].class, 0x010802);
        assert_eq!(devs[0].bars[0].size(), 0x4000);
        assert_eq!(
            run.guest_pci_mem_windows(1),
            vec![(0xc000_0000, 0xcfff_ffff)]
        );
        assert!(run.guest_pci_mem_windows(0).is_empty());
    }

    #[test]
    fn capability_walk_checks_the_chain() {
        let mut config = vec![0u8; 256];
        config[0x06] = 0x10;
        config[0x34] = 0x40;
        config[0x40] = 0x11; // MSI-X
        config[0x41] = 0x60;
        config[0x60] = 0x09;
        config[0x61] = 0x00;
        let caps = pci_capabilities(&config).unwrap();
        assert_eq!(
            caps.iter().map(|c| (c.offset, c.id)).collect::<Vec<_>>(),
            vec![(0x40, 0x11), (0x60, 0x09)]
        );
        config[0x61] = 0x40;
        assert!(pci_capabilities(&config).unwrap_err().contains("loops"));
        config[0x61] = 0x3c;
        assert!(pci_capabilities(&config).is_err());
        config[0x06] = 0;
        assert!(pci_capabilities(&config).is_err());
        assert_eq!(leading_token(b"abc-1.2\0\0xyz"), "abc-1.2");
    }
}
