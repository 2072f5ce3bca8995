//! A rig host that stops dead, and the one rerun it gets.
//!
//! The rig host (L2) runs under QEMU's software emulation. Now and then, mostly with two CPUs,
//! it stops altogether: its CPUs loop with interrupts off, nothing runs in it, and its kernel
//! cannot even report a soft lockup (docs/rig.md, "The log stops growing"). It is the
//! emulator, not viaduct: a hung viaduct or guest is ended by the scenario's own `rig-bounded`,
//! which prints `RIG-HANG|` lines and `VIADUCT-EXIT=137`, so the log keeps growing.
//!
//! So each rig run is watched with `run.sh --stall SECS`, SECS longer than any `rig-bounded`
//! bound in the scenario. When the log stood still that long, run.sh writes `RIG-STALL:` lines
//! (where the CPUs were) and stops QEMU; the harness then keeps that log and runs the scenario
//! once more, from the test's files as they were before the first run (a disk the stalled run
//! half wrote must not answer for the second). A second stall fails the test.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::VIADUCT_TIMEOUT_SECS;

/// How much longer than the scenario's longest `rig-bounded` bound the log may stand still
/// before the rig host counts as stalled: the bound's own report, and the scenario's steps
/// between viaduct runs (a bind, a `cat`), print well within it.
pub const STALL_MARGIN_SECS: u64 = 60;

/// What run.sh writes into the log when it stopped a stalled rig host.
pub const STALL_MARK: &str = "RIG-STALL:";

/// The name of the copy of a test's files, inside the test's directory.
const BEFORE_RUN: &str = ".before-run";

/// `--stall` seconds for `scenario`: its longest `rig-bounded` bound (or
/// [`VIADUCT_TIMEOUT_SECS`] when it has none) plus [`STALL_MARGIN_SECS`]. `None` when that
/// would not end before the rig's own `timeout_secs`: then the timeout decides, as before.
pub fn stall_secs(scenario: &str, timeout_secs: u64) -> Option<u64> {
    let longest = scenario
        .split("rig-bounded ")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .max()
        .unwrap_or(VIADUCT_TIMEOUT_SECS);
    let secs = longest + STALL_MARGIN_SECS;
    (secs < timeout_secs).then_some(secs)
}

/// Whether run.sh stopped this run's rig host as stalled.
pub fn stalled(log: &str) -> bool {
    log.contains(STALL_MARK)
}

/// A copy of a test's files (disk images, shared-memory files, cloud-init seeds) taken before
/// its rig run, to put back before a rerun.
pub struct FilesBeforeRun {
    dir: PathBuf,
    copy: PathBuf,
    /// The harness's own files, which are neither copied nor put back.
    skip: Vec<String>,
}

impl FilesBeforeRun {
    /// Copies everything in `dir` but the names in `skip` into `dir/.before-run` (sparse files
    /// stay sparse, so a 4 GiB shared-memory file costs what it holds).
    pub fn take(dir: &Path, skip: &[&str]) -> io::Result<Self> {
        let copy = dir.join(BEFORE_RUN);
        remove(&copy)?;
        fs::create_dir(&copy)?;
        let saved = FilesBeforeRun {
            dir: dir.to_path_buf(),
            copy,
            skip: skip.iter().map(|s| s.to_string()).collect(),
        };
        for path in saved.entries(&saved.dir)? {
            let status = Command::new("cp")
                .args(["-a", "--sparse=always", "--reflink=auto"])
                .arg(&path)
                .arg(&saved.copy)
                .status()?;
            if !status.success() {
                return Err(io::Error::other(format!(
                    "cp {} {} failed ({status})",
                    path.display(),
                    saved.copy.display()
                )));
            }
        }
        Ok(saved)
    }

    /// Puts the files back as they were when taken: what the run added goes, what it changed
    /// is replaced. The copy is used up; take a new one for a further run.
    pub fn restore(&self) -> io::Result<()> {
        for path in self.entries(&self.dir)? {
            remove(&path)?;
        }
        for path in self.entries(&self.copy)? {
            let name = path.file_name().expect("a directory entry has a name");
            fs::rename(&path, self.dir.join(name))?;
        }
        Ok(())
    }

    /// `dir`'s entries, without the copy and the skipped names.
    fn entries(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut paths = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != BEFORE_RUN && !self.skip.contains(&name) {
                paths.push(entry.path());
            }
        }
        paths.sort();
        Ok(paths)
    }
}

impl Drop for FilesBeforeRun {
    fn drop(&mut self) {
        let _ = remove(&self.copy);
    }
}

/// Removes a file or a directory tree; one that is not there is fine.
fn remove(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    #[test]
    fn the_stall_bound_outlasts_the_longest_viaduct_bound() {
        let two =
            "echo a\n{ { rig-bounded 240 viaduct -v x; } }\n{ { rig-bounded 540 viaduct; } }\n";
        assert_eq!(stall_secs(two, 900), Some(600));
        assert_eq!(stall_secs("echo no viaduct\n", 600), Some(300));
        // Not before the rig's own timeout: the timeout decides.
        assert_eq!(stall_secs(two, 600), None);
        assert_eq!(stall_secs("rig-bounded x viaduct\n", 301), Some(300));
    }

    #[test]
    fn a_stall_is_told_by_runs_own_lines_only() {
        assert!(stalled("VIADUCT-EXIT=0\nRIG-STALL: no output for 300s\n"));
        assert!(!stalled(
            "RIG-HANG| viaduct still running after 240s\nVIADUCT-EXIT=137\n"
        ));
    }

    #[test]
    fn files_come_back_as_they_were_before_the_run() {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("stall-files-before-run");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("seed")).unwrap();
        fs::write(dir.join("nva.img"), b"marker").unwrap();
        fs::write(dir.join("seed/user-data"), b"#cloud-config").unwrap();
        fs::write(dir.join("serial.log"), b"first run").unwrap();
        let sparse = fs::File::create(dir.join("shm")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        sparse.write_all_at(b"x", 1 << 20).unwrap();

        let saved = FilesBeforeRun::take(&dir, &["serial.log"]).unwrap();
        // What a stalled run might leave: a half-written disk, a new file, a deleted one, a log.
        fs::write(dir.join("nva.img"), b"token!").unwrap();
        fs::write(dir.join("overlay.qcow2"), b"new").unwrap();
        fs::remove_dir_all(dir.join("seed")).unwrap();
        fs::write(dir.join("serial.log"), b"stalled run").unwrap();
        saved.restore().unwrap();

        assert_eq!(fs::read(dir.join("nva.img")).unwrap(), b"marker");
        assert_eq!(
            fs::read(dir.join("seed/user-data")).unwrap(),
            b"#cloud-config"
        );
        assert!(!dir.join("overlay.qcow2").exists());
        assert_eq!(fs::read(dir.join("serial.log")).unwrap(), b"stalled run");
        let shm = fs::metadata(dir.join("shm")).unwrap();
        assert_eq!(shm.len(), 1 << 30);
        assert!(shm.blocks() * 512 < 1 << 20, "the copy filled the holes");
        drop(saved);
        assert!(!dir.join(BEFORE_RUN).exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
