//! What the host can give guest RAM: its total memory (`/proc/meminfo`) and its hugepage pools
//! (`/sys/kernel/mm/hugepages/hugepages-<kB>kB/`). Read before guest RAM is mapped, so that a
//! guest larger than the host, or a hugepage shortage, is refused at start with the numbers and
//! the remedy — never an OOM kill or a SIGBUS later. `viaduct check --memory` reports the same.

use std::fs;
use std::path::Path;

use super::HostPaths;
use crate::error::human;

/// One hugepage pool of the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HugepagePool {
    /// Page size in bytes (2 MiB, 1 GiB).
    pub page_size: u64,
    /// `nr_hugepages`: pages in the pool.
    pub total: u64,
    /// `free_hugepages`: pages not in use.
    pub free: u64,
    /// `resv_hugepages`: free pages already promised to mappings.
    pub reserved: u64,
}

impl HugepagePool {
    /// Pages a new mapping can still get.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }
}

/// Why the host cannot back guest RAM as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostMemoryError {
    /// More RAM than the host has.
    #[error(
        "--memory size={} is more than this host's {} of memory (MemTotal in /proc/meminfo); \
         give the guest less",
        human(*.size),
        human(*.mem_total)
    )]
    TooLarge {
        /// Guest RAM asked for.
        size: u64,
        /// The host's MemTotal.
        mem_total: u64,
    },
    /// The host has no hugepages of the size asked for.
    #[error(
        "this host has no {} hugepages (its sizes: {available}); use hugepage_size= with one of \
         those, or boot the host with hugepagesz={} hugepages=N",
        human(*.page_size),
        short_size(*.page_size)
    )]
    NoSuchHugepageSize {
        /// The size asked for.
        page_size: u64,
        /// The sizes the host has, formatted.
        available: String,
    },
    /// Not enough free hugepages.
    #[error(
        "--memory size={} with {} hugepages needs {need} free hugepages but the host has only \
         {available} ({free} free, {reserved} already reserved, {total} in the pool); reserve \
         {want} with `echo {want} > /sys/kernel/mm/hugepages/hugepages-{kib}kB/nr_hugepages` \
         (as root; for 2 MiB pages also /proc/sys/vm/nr_hugepages), or boot the host with \
         hugepagesz={short} hugepages={want}",
        human(*.size),
        human(*.page_size),
        available = .free.saturating_sub(*.reserved),
        want = .total + .need - .free.saturating_sub(*.reserved),
        kib = .page_size / 1024,
        short = short_size(*.page_size)
    )]
    HugepageShortage {
        /// Guest RAM asked for.
        size: u64,
        /// Page size.
        page_size: u64,
        /// Pages the guest needs.
        need: u64,
        /// `free_hugepages`.
        free: u64,
        /// `resv_hugepages`.
        reserved: u64,
        /// `nr_hugepages`.
        total: u64,
    },
}

/// `2M`, `1G`: a page size as the kernel command line writes it.
fn short_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b.is_multiple_of(1 << 30) => format!("{}G", b >> 30),
        b if b >= 1 << 20 && b.is_multiple_of(1 << 20) => format!("{}M", b >> 20),
        b => format!("{}K", b >> 10),
    }
}

/// A `Key:   123 kB` value of `/proc/meminfo` text, in bytes.
pub fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.split(':').next() == Some(key))?;
    let mut words = line.split(':').nth(1)?.split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// The host's MemTotal, if `/proc/meminfo` can be read.
pub fn mem_total(paths: &HostPaths) -> Option<u64> {
    let text = fs::read_to_string(paths.proc.join("meminfo")).ok()?;
    meminfo_bytes(&text, "MemTotal")
}

/// The host's default hugepage size (`Hugepagesize` in `/proc/meminfo`).
pub fn default_hugepage_size(paths: &HostPaths) -> Option<u64> {
    let text = fs::read_to_string(paths.proc.join("meminfo")).ok()?;
    meminfo_bytes(&text, "Hugepagesize")
}

fn read_count(dir: &Path, name: &str) -> Option<u64> {
    fs::read_to_string(dir.join(name)).ok()?.trim().parse().ok()
}

/// Every hugepage pool of the host, smallest page first.
pub fn hugepage_pools(paths: &HostPaths) -> Vec<HugepagePool> {
    let root = paths.sys.join("kernel/mm/hugepages");
    let mut pools: Vec<HugepagePool> = fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let kib: u64 = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            let dir = e.path();
            Some(HugepagePool {
                page_size: kib.checked_mul(1024)?,
                total: read_count(&dir, "nr_hugepages")?,
                free: read_count(&dir, "free_hugepages")?,
                reserved: read_count(&dir, "resv_hugepages").unwrap_or(0),
            })
        })
        .collect();
    pools.sort_by_key(|p| p.page_size);
    pools
}

/// Checks that RAM of `size` bytes fits the host: within MemTotal for ordinary memory, within
/// the available pages of the `page_size` pool for hugepages (`Some`). Returns the pool used.
pub fn check_guest_ram(
    size: u64,
    hugepages: Option<u64>,
    mem_total: Option<u64>,
    pools: &[HugepagePool],
) -> Result<Option<HugepagePool>, HostMemoryError> {
    let Some(page_size) = hugepages else {
        return match mem_total {
            Some(total) if size > total => Err(HostMemoryError::TooLarge {
                size,
                mem_total: total,
            }),
            _ => Ok(None),
        };
    };
    let Some(pool) = pools.iter().find(|p| p.page_size == page_size) else {
        let available: Vec<String> = pools.iter().map(|p| human(p.page_size)).collect();
        return Err(HostMemoryError::NoSuchHugepageSize {
            page_size,
            available: if available.is_empty() {
                "none".to_string()
            } else {
                available.join(", ")
            },
        });
    };
    let need = size.div_ceil(page_size);
    if pool.available() < need {
        return Err(HostMemoryError::HugepageShortage {
            size,
            page_size,
            need,
            free: pool.free,
            reserved: pool.reserved,
            total: pool.total,
        });
    }
    Ok(Some(*pool))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:        2014364 kB\nMemFree:         1500000 kB\n\
                           HugePages_Total:     600\nHugePages_Free:      600\n\
                           Hugepagesize:       2048 kB\n";

    fn pools(free: u64, reserved: u64) -> Vec<HugepagePool> {
        vec![
            HugepagePool {
                page_size: 2 << 20,
                total: 600,
                free,
                reserved,
            },
            HugepagePool {
                page_size: 1 << 30,
                total: 0,
                free: 0,
                reserved: 0,
            },
        ]
    }

    #[test]
    fn meminfo_values_are_read_in_bytes() {
        assert_eq!(meminfo_bytes(MEMINFO, "MemTotal"), Some(2014364 * 1024));
        assert_eq!(meminfo_bytes(MEMINFO, "Hugepagesize"), Some(2 << 20));
        assert_eq!(meminfo_bytes(MEMINFO, "HugePages_Free"), Some(600));
        assert_eq!(meminfo_bytes(MEMINFO, "Mem"), None);
    }

    #[test]
    fn ram_beyond_memtotal_is_refused_with_both_numbers() {
        let total = 2014364 * 1024;
        let err = check_guest_ram(4 << 30, None, Some(total), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--memory size=4 GiB is more than this host's 1.9 GiB of memory (MemTotal in \
             /proc/meminfo); give the guest less"
        );
        assert_eq!(check_guest_ram(1 << 30, None, Some(total), &[]), Ok(None));
        assert_eq!(check_guest_ram(1 << 40, None, None, &[]), Ok(None));
    }

    #[test]
    fn a_hugepage_shortage_says_what_is_free_what_is_needed_and_how_to_reserve() {
        let err = check_guest_ram(1 << 30, Some(2 << 20), None, &pools(100, 20)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "--memory size=1 GiB with 2 MiB hugepages needs 512 free hugepages but the host \
                 has only 80 (100 free, 20 already reserved, 600 in the pool)"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("echo 1032 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"),
            "{msg}"
        );
        assert!(msg.contains("/proc/sys/vm/nr_hugepages"), "{msg}");
        assert!(msg.contains("hugepagesz=2M hugepages=1032"), "{msg}");
        let ok = check_guest_ram(1 << 30, Some(2 << 20), None, &pools(600, 0)).unwrap();
        assert_eq!(ok.map(|p| p.available()), Some(600));
    }

    #[test]
    fn a_page_size_the_host_lacks_is_named_with_the_ones_it_has() {
        let only_2m = &pools(600, 0)[..1];
        let err = check_guest_ram(1 << 30, Some(1 << 30), None, only_2m).unwrap_err();
        assert_eq!(
            err.to_string(),
            "this host has no 1 GiB hugepages (its sizes: 2 MiB); use hugepage_size= with one of \
             those, or boot the host with hugepagesz=1G hugepages=N"
        );
        // The 1 GiB pool exists but is empty: a shortage, not a missing size.
        let err = check_guest_ram(2 << 30, Some(1 << 30), None, &pools(600, 0)).unwrap_err();
        assert!(matches!(
            err,
            HostMemoryError::HugepageShortage { need: 2, .. }
        ));
    }

    #[test]
    fn pools_are_read_from_sysfs() {
        let root = std::env::temp_dir().join(format!("viaduct-hp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for (kib, nr, free, resv) in [(1048576, 2, 1, 0), (2048, 512, 500, 10)] {
            let dir = root.join(format!("sys/kernel/mm/hugepages/hugepages-{kib}kB"));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("nr_hugepages"), format!("{nr}\n")).unwrap();
            fs::write(dir.join("free_hugepages"), format!("{free}\n")).unwrap();
            fs::write(dir.join("resv_hugepages"), format!("{resv}\n")).unwrap();
        }
        fs::create_dir_all(root.join("proc")).unwrap();
        fs::write(root.join("proc/meminfo"), MEMINFO).unwrap();
        let paths = HostPaths {
            sys: root.join("sys"),
            proc: root.join("proc"),
            dev: root.join("dev"),
            state_file: root.join("state.json"),
        };
        let found = hugepage_pools(&paths);
        assert_eq!(found.len(), 2);
        assert_eq!(
            found[0],
            HugepagePool {
                page_size: 2 << 20,
                total: 512,
                free: 500,
                reserved: 10
            }
        );
        assert_eq!(found[1].page_size, 1 << 30);
        assert_eq!(default_hugepage_size(&paths), Some(2 << 20));
        assert_eq!(mem_total(&paths), Some(2014364 * 1024));
        fs::remove_dir_all(&root).unwrap();
    }
}
