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

/// How long the whole rig run (QEMU boot of L2, the scenario, power-off) may take.
/// `VIADUCT_RIG_TIMEOUT` overrides it.
pub const RIG_TIMEOUT_SECS: u64 = 420;

/// How long viaduct may run inside a scenario before `timeout` stops it, well inside
/// [`RIG_TIMEOUT_SECS`] so that a hung guest fails one test instead of the rig.
pub const VIADUCT_TIMEOUT_SECS: u64 = 240;

/// The exit status left when `timeout` had to kill viaduct (128 + SIGKILL; SIGKILL because
/// viaduct handles SIGTERM and would exit with its own status).
pub const VIADUCT_TIMED_OUT: i32 = 137;

/// Prefix of each line viaduct wrote to stderr, in scenarios built with [`viaduct_command`].
pub const VIADUCT_STDERR_PREFIX: &str = "VIADUCT-STDERR| ";

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
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = rig_dir(test_name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let scenario_path = dir.join("scenario.sh");
    let log_path = dir.join("serial.log");
    let stderr_path = dir.join("run.stderr");
    fs::write(&scenario_path, scenario).expect("write the scenario");

    let timeout = std::env::var("VIADUCT_RIG_TIMEOUT").unwrap_or(RIG_TIMEOUT_SECS.to_string());
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
        .stdin(Stdio::null())
        // The serial log goes to `log_path`; the copy on stdout would only flood the test output.
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr_path).expect("create run.stderr"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run resources/rig/run.sh: {e}"));
    let seconds = started.elapsed().as_secs_f64();

    let raw = fs::read(&log_path).unwrap_or_default();
    let run = RigRun {
        log: String::from_utf8_lossy(&raw).into_owned(),
        log_path,
        seconds,
    };
    let rig_stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    eprintln!(
        "[{test_name}] rig run took {seconds:.1}s; log: {}",
        run.log_path.display()
    );
    if !status.success() {
        panic!(
            "the rig failed for test {test_name} ({status}):\n{}\n{}",
            rig_stderr.trim_end(),
            run.context()
        );
    }
    run
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
         {{ {{ timeout -s KILL {VIADUCT_TIMEOUT_SECS} viaduct -v {args} 2>&1 1>&3 3>&-; \
         echo $? >/tmp/viaduct.status; }} | sed 's/^/{VIADUCT_STDERR_PREFIX}/'; }} 3>&1\n\
         echo \"VIADUCT-EXIT=$(cat /tmp/viaduct.status) uptime=$(cut -d' ' -f1 /proc/uptime)\"\n"
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
fn values_in<'a>(text: &'a str, key: &str) -> Vec<(usize, &'a str)> {
    let needle = format!("{key}=");
    let mut found = Vec::new();
    let mut offset = 0;
    for line in clean_lines(text) {
        let mut from = 0;
        while let Some(pos) = line[from..].find(&needle) {
            let start = from + pos;
            let glued = line[..start]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            let rest = &line[start + needle.len()..];
            if !glued {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                found.push((offset + start, &rest[..end]));
            }
            from = start + needle.len();
        }
        offset += line.len() + 1;
    }
    found
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
}
