//! Which PCI device holds the host's root filesystem, so that `viaduct bind` does not pull the
//! disk out from under the running host.
//!
//! The root mount's device number comes from `/proc/self/mountinfo` (the last mount on `/`);
//! `/sys/dev/block/MAJ:MIN` leads to the block device's sysfs directory, which sits under the
//! PCI device that provides it. Device-mapper and MD volumes (LVM, dm-crypt, RAID) are followed
//! through their `slaves/` to the disks underneath. A filesystem without one block device
//! (btrfs reports an anonymous `0:N`, so its `/dev/...` source is used instead; tmpfs or an
//! initramfs has none) holds no PCI device.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::HostPaths;

/// A block device backing `/`: its name and sysfs directory (symlinks resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootDisk {
    /// Kernel name, e.g. `nvme0n1p2`.
    pub name: String,
    /// Its sysfs directory, under the PCI device that provides it.
    pub sysfs: PathBuf,
}

/// `(major, minor, source)` of the last mount on `/` in `mountinfo` text.
fn root_mount(mountinfo: &str) -> Option<(u32, u32, String)> {
    mountinfo.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(4) != Some(&"/") {
            return None;
        }
        let (maj, min) = fields.get(2)?.split_once(':')?;
        let sep = fields.iter().position(|f| *f == "-")?;
        let source = fields.get(sep + 2).unwrap_or(&"").to_string();
        Some((maj.parse().ok()?, min.parse().ok()?, source))
    })
}

/// The leaf block devices (no `slaves/`) under the block device at sysfs `dir`.
fn leaves(dir: &Path, depth: usize, out: &mut Vec<RootDisk>) {
    let slaves: Vec<PathBuf> = fs::read_dir(dir.join("slaves"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| fs::canonicalize(e.path()).ok())
        .collect();
    if slaves.is_empty() || depth > 8 {
        if let Some(name) = dir.file_name() {
            out.push(RootDisk {
                name: name.to_string_lossy().into_owned(),
                sysfs: dir.to_path_buf(),
            });
        }
        return;
    }
    for s in slaves {
        leaves(&s, depth + 1, out);
    }
}

/// The block devices that back the host's root filesystem (empty when none can be found).
pub fn root_disks(paths: &HostPaths) -> Vec<RootDisk> {
    let Ok(mountinfo) = fs::read_to_string(paths.proc.join("self/mountinfo")) else {
        return Vec::new();
    };
    let Some((mut major, mut minor, source)) = root_mount(&mountinfo) else {
        return Vec::new();
    };
    if major == 0 {
        // An anonymous device (btrfs): fall back to the mount source's device node.
        let Some(node) = source.strip_prefix("/dev/") else {
            return Vec::new();
        };
        let Ok(meta) = fs::metadata(paths.dev.join(node)) else {
            return Vec::new();
        };
        let rdev = meta.rdev();
        major = libc::major(rdev);
        minor = libc::minor(rdev);
        if major == 0 {
            return Vec::new();
        }
    }
    let Ok(dir) = fs::canonicalize(paths.sys.join(format!("dev/block/{major}:{minor}"))) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    leaves(&dir, 0, &mut out);
    out
}

/// The root disk that sits under the PCI device whose sysfs directory is `device_dir`.
pub fn root_disk_under(paths: &HostPaths, device_dir: &Path) -> Option<RootDisk> {
    let dir = fs::canonicalize(device_dir).ok()?;
    root_disks(paths)
        .into_iter()
        .find(|d| d.sysfs.starts_with(&dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fixture::*;

    #[test]
    fn mountinfo_root_is_the_last_mount_on_slash() {
        let text = "1 0 0:2 / / rw - rootfs rootfs rw\n\
                    22 1 259:2 / / rw,relatime - ext4 /dev/nvme0n1p2 rw\n\
                    23 22 0:5 / /dev rw - devtmpfs udev rw\n";
        assert_eq!(root_mount(text), Some((259, 2, "/dev/nvme0n1p2".into())));
        assert_eq!(root_mount("23 22 0:5 / /dev rw - devtmpfs udev rw\n"), None);
    }

    #[test]
    fn root_partition_is_found_under_its_nvme_controller() {
        let f = Fixture::new();
        let nvme = f.pci("0000:00:10.0", NVME, Some("nvme"), Some(1));
        let other = f.pci("0000:00:11.0", NVME, Some("nvme"), Some(2));
        f.root_on("0000:00:10.0", "nvme0n1p2", "259:2", false);
        let disk = root_disk_under(&f.paths, &nvme).unwrap();
        assert_eq!(disk.name, "nvme0n1p2");
        assert_eq!(root_disk_under(&f.paths, &other), None);
    }

    #[test]
    fn root_on_device_mapper_is_followed_to_the_disk() {
        let f = Fixture::new();
        let nvme = f.pci("0000:00:10.0", NVME, Some("nvme"), Some(1));
        f.root_on("0000:00:10.0", "nvme0n1p3", "259:3", true);
        let disks = root_disks(&f.paths);
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].name, "nvme0n1p3");
        assert!(root_disk_under(&f.paths, &nvme).is_some());
    }

    #[test]
    fn initramfs_root_holds_no_device() {
        let f = Fixture::new();
        let nvme = f.pci("0000:00:10.0", NVME, Some("nvme"), Some(1));
        fs::write(
            f.paths.proc.join("self/mountinfo"),
            "1 1 0:2 / / rw - rootfs rootfs rw\n",
        )
        .unwrap();
        assert!(root_disks(&f.paths).is_empty());
        assert_eq!(root_disk_under(&f.paths, &nvme), None);
    }
}
