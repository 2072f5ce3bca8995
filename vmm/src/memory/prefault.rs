//! Populating guest RAM before the guest runs, in parallel: every page faulted in (and zeroed)
//! by `madvise(MADV_POPULATE_WRITE)` from one thread per host CPU the process may use, in
//! chunks taken from a shared queue. That is most of the cost of starting a large guest with a
//! passed-through device, where VFIO would otherwise fault every page in itself, on one thread,
//! inside `VFIO_IOMMU_MAP_DMA`. On a kernel without `MADV_POPULATE_WRITE` (before 5.14) each
//! page is touched instead (an atomic add of 0 to one byte, so contents are kept, even in a
//! running guest).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::{GuestMemoryMmap, MemoryError};
use crate::config::MemoryBacking;

/// `MADV_POPULATE_WRITE` (Linux 5.14).
const MADV_POPULATE_WRITE: libc::c_int = 23;
/// Work is handed out in chunks of this size (or of one page, if pages are larger), so threads
/// that finish early take over from slow ones.
const CHUNK: u64 = 64 << 20;
/// The chunks of [`TwoEnds`]: small, so that the threads at its two ends meet closely (one
/// 2 MiB huge page, or one page if pages are larger).
const SMALL_CHUNK: u64 = 2 << 20;

/// Private anonymous guest RAM at least this large is prefaulted before its first DMA mapping
/// when `prefault` is not given. Measured in the rig (docs/memory.md, 2-CPU rig host): for 2 GiB
/// two threads halve the start, for 512 MiB the extra pass costs more than they save.
pub const BEFORE_PIN_MIN_BYTES: u64 = 1 << 30;

/// Whether guest RAM is prefaulted, in parallel, just before it is first DMA-mapped for a
/// passed-through device, when the user did not say: pinning faults in (and zeroes) every page
/// anyway, on one thread, so doing that first on `cpus` threads only moves the work and shares
/// it out. Only for private anonymous 4 KiB-page RAM of at least [`BEFORE_PIN_MIN_BYTES`] and
/// more than one CPU: hugepages pin fast already (a prefault pass made them slower), and so do
/// small guests; shared or file-backed RAM was not measured. `prefault=on` prefaults at start
/// regardless, `prefault=off` never. At start the mapping runs beside the booting guest, so
/// `cpus` is then what the guest's vCPUs leave ([`cpus_beside_guest`]): with one to spare, the
/// pin alone is as parallel and makes one pass instead of two (measured, docs/memory.md).
pub fn prefault_before_pin(
    backing: &MemoryBacking,
    bytes: u64,
    hugetlb: bool,
    cpus: usize,
) -> bool {
    backing.prefault.is_none()
        && !hugetlb
        && !backing.shared
        && backing.file.is_none()
        && bytes >= BEFORE_PIN_MIN_BYTES
        && cpus > 1
}

/// The CPUs left to prefault and DMA-map guest RAM while `vcpus` vCPUs boot the guest, out of
/// `cpus`.
pub fn cpus_beside_guest(cpus: usize, vcpus: u8) -> usize {
    cpus.saturating_sub(usize::from(vcpus))
}

/// The CPUs this process may run on (its affinity mask and cgroup quota), at least 1: the
/// number of prefault threads.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What prefaulting did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefaultStats {
    /// Bytes populated.
    pub bytes: u64,
    /// Threads used.
    pub threads: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// Whether `MADV_POPULATE_WRITE` was missing and pages were touched one by one.
    pub touched: bool,
    /// Whether it was stopped before the end ([`prefault_until`]); `bytes` is then what was
    /// populated.
    pub stopped: bool,
}

/// One piece of work: a host address range of guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chunk {
    host: usize,
    len: u64,
}

/// Cuts `regions` (host address, length) into chunks of `chunk` bytes, each a whole number of
/// `page`s.
fn chunks(regions: &[(usize, u64)], page: u64, chunk: u64) -> Vec<Chunk> {
    let step = chunk.max(page).next_multiple_of(page);
    let mut out = Vec::new();
    for &(host, len) in regions {
        let mut done = 0;
        while done < len {
            let n = step.min(len - done);
            out.push(Chunk {
                host: host + done as usize,
                len: n,
            });
            done += n;
        }
    }
    out
}

/// Threads to use for `bytes` of RAM: one per CPU this process may run on, but no more than
/// there are chunks.
fn thread_count(work: usize, max_threads: usize) -> usize {
    max_threads.min(work).max(1)
}

/// Faults in the pages of `c` for writing by adding 0 to one byte per page, atomically: the
/// contents stay as they are even while the guest runs and writes the same byte (a first
/// device hot-plugged prefaults a running guest's RAM), which a read followed by a write-back
/// would not guarantee.
fn touch(c: Chunk, page: u64) {
    use std::sync::atomic::AtomicU8;
    let mut at = 0;
    while at < c.len {
        let p = (c.host + at as usize) as *mut u8;
        // SAFETY: `p` is inside guest RAM, a live read/write mapping of this process for as
        // long as the VM exists; every other access to it (vCPUs, the VMM's volatile
        // accesses) is at most byte-sized or atomic, and an atomic add of 0 changes nothing.
        unsafe { AtomicU8::from_ptr(p) }.fetch_add(0, Ordering::Relaxed);
        at += page;
    }
}

/// Populates every page of `mem` (pages of `page` bytes; `hugetlb` for the messages) on up to
/// `max_threads` threads.
pub fn prefault(
    mem: &GuestMemoryMmap,
    page: u64,
    hugetlb: bool,
    max_threads: usize,
) -> Result<PrefaultStats, MemoryError> {
    prefault_until(mem, page, hugetlb, max_threads, &AtomicBool::new(false))
}

/// [`prefault`], but each thread looks at `stop` before each chunk and ends once it is set (the
/// VM is stopping); the stats then say `stopped`.
pub fn prefault_until(
    mem: &GuestMemoryMmap,
    page: u64,
    hugetlb: bool,
    max_threads: usize,
    stop: &AtomicBool,
) -> Result<PrefaultStats, MemoryError> {
    let regions: Vec<(usize, u64)> = mem.iter().map(|r| (r.as_ptr() as usize, r.len())).collect();
    let work = chunks(&regions, page, CHUNK);
    let next = AtomicUsize::new(0);
    populate(
        &|| work.get(next.fetch_add(1, Ordering::Relaxed)).copied(),
        thread_count(work.len(), max_threads),
        page,
        hugetlb,
        stop,
    )
}

/// Guest RAM cut into small chunks (one 2 MiB huge page, or one page if pages are larger) that
/// threads take from its two ends while it is DMA-mapped beside the booting guest: the thread
/// that maps it from the bottom up, and helpers on the CPUs of vCPUs held at the bus-master
/// gate from the top down. Each chunk is populated once, and the map thread pins only when all
/// are present. A pin running beside a populate waits for it: after each run of pages VFIO
/// accounts them as locked with the process's memory map locked for writing, which a populate
/// holds for reading while it zeroes a page (in the rig a pin beside a helper lost about a
/// fifth of both threads' time that way, docs/memory.md).
pub struct TwoEnds {
    work: Vec<Chunk>,
    /// The chunks not yet taken: `work[lo..hi]`.
    ends: std::sync::Mutex<(usize, usize)>,
    page: u64,
    hugetlb: bool,
}

impl TwoEnds {
    /// `regions` (host address, length) in pages of `page` bytes (`hugetlb` for messages).
    pub fn new(regions: &[(usize, u64)], page: u64, hugetlb: bool) -> Self {
        let work = chunks(regions, page, SMALL_CHUNK);
        let n = work.len();
        TwoEnds {
            work,
            ends: std::sync::Mutex::new((0, n)),
            page,
            hugetlb,
        }
    }

    /// The next chunk from the bottom (`from_top` false) or the top; `None` once all are taken.
    fn take(&self, from_top: bool) -> Option<Chunk> {
        let mut ends = self.ends.lock().unwrap_or_else(|e| e.into_inner());
        let (lo, hi) = *ends;
        if lo >= hi {
            return None;
        }
        let at = if from_top {
            ends.1 -= 1;
            ends.1
        } else {
            ends.0 += 1;
            lo
        };
        Some(self.work[at])
    }

    /// Populates chunks from the bottom up on this thread until none is left or `stop` is set.
    pub fn from_bottom(&self, stop: &AtomicBool) -> Result<PrefaultStats, MemoryError> {
        populate(&|| self.take(false), 1, self.page, self.hugetlb, stop)
    }

    /// Populates chunks from the top down on up to `max_threads` threads until none is left or
    /// `stop` is set.
    pub fn from_top(
        &self,
        max_threads: usize,
        stop: &AtomicBool,
    ) -> Result<PrefaultStats, MemoryError> {
        let threads = thread_count(self.work.len(), max_threads);
        populate(&|| self.take(true), threads, self.page, self.hugetlb, stop)
    }
}

/// Populates the chunks `next` hands out on `threads` threads, each looking at `stop` before
/// each chunk.
fn populate(
    next: &(dyn Fn() -> Option<Chunk> + Sync),
    threads: usize,
    page: u64,
    hugetlb: bool,
    stop: &AtomicBool,
) -> Result<PrefaultStats, MemoryError> {
    let no_populate = AtomicBool::new(false);
    let (populated, stopped) = (AtomicU64::new(0), AtomicBool::new(false));
    let start = Instant::now();
    let failures: Vec<MemoryError> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<(), MemoryError> {
                    loop {
                        // Looked at before a chunk is taken: one taken is one populated.
                        if stop.load(Ordering::Acquire) {
                            stopped.store(true, Ordering::Relaxed);
                            return Ok(());
                        }
                        let Some(c) = next() else { break };
                        populated.fetch_add(c.len, Ordering::Relaxed);
                        if no_populate.load(Ordering::Relaxed) {
                            touch(c, page);
                            continue;
                        }
                        // SAFETY: the chunk is inside guest RAM, a mapping of this process;
                        // populating it only faults pages in.
                        let ret = unsafe {
                            libc::madvise(
                                c.host as *mut libc::c_void,
                                c.len as usize,
                                MADV_POPULATE_WRITE,
                            )
                        };
                        if ret == 0 {
                            continue;
                        }
                        let e = std::io::Error::last_os_error();
                        if e.raw_os_error() == Some(libc::EINVAL) {
                            // A kernel before 5.14: touch the pages instead, from now on.
                            no_populate.store(true, Ordering::Relaxed);
                            touch(c, page);
                            continue;
                        }
                        return Err(MemoryError::Prefault {
                            host: c.host,
                            bytes: c.len,
                            hugetlb,
                            source: e,
                        });
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok().and_then(Result::err))
            .collect()
    });
    if let Some(e) = failures.into_iter().next() {
        return Err(e);
    }
    Ok(PrefaultStats {
        bytes: populated.load(Ordering::Relaxed),
        threads,
        elapsed: start.elapsed(),
        touched: no_populate.load(Ordering::Relaxed),
        stopped: stopped.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_large_private_anonymous_ram_is_prefaulted_before_pinning_by_default() {
        let anon = MemoryBacking::default();
        let gib = 1 << 30;
        assert!(prefault_before_pin(&anon, 2 * gib, false, 2));
        assert!(prefault_before_pin(&anon, gib, false, 16));
        // Too small, one CPU, hugepages: the rig measured it slower, or it cannot help.
        assert!(!prefault_before_pin(&anon, 512 << 20, false, 2));
        assert!(!prefault_before_pin(&anon, 2 * gib, false, 1));
        // Beside a booting guest, what its vCPUs leave counts: 2 CPUs and 1 vCPU leave one,
        // and the pin alone is as parallel as that.
        assert_eq!(cpus_beside_guest(2, 1), 1);
        assert_eq!(cpus_beside_guest(4, 8), 0);
        assert!(!prefault_before_pin(
            &anon,
            2 * gib,
            false,
            cpus_beside_guest(2, 1)
        ));
        assert!(prefault_before_pin(
            &anon,
            2 * gib,
            false,
            cpus_beside_guest(3, 1)
        ));
        assert!(!prefault_before_pin(&anon, 2 * gib, true, 2));
        // Shared or file-backed RAM: not measured, left as asked.
        let shared = MemoryBacking {
            shared: true,
            ..MemoryBacking::default()
        };
        assert!(!prefault_before_pin(&shared, 2 * gib, false, 2));
        let file = MemoryBacking {
            shared: true,
            file: Some("/dev/shm/ram".into()),
            ..MemoryBacking::default()
        };
        assert!(!prefault_before_pin(&file, 2 * gib, false, 2));
        // Said either way: prefault=on already ran at start, prefault=off means never.
        for prefault in [Some(true), Some(false)] {
            let asked = MemoryBacking {
                prefault,
                ..MemoryBacking::default()
            };
            assert!(
                !prefault_before_pin(&asked, 2 * gib, false, 2),
                "{prefault:?}"
            );
        }
    }

    #[test]
    fn chunks_cover_the_regions_in_whole_pages() {
        let got = chunks(
            &[(0x1000_0000, 150 << 20), (0x8000_0000, 10 << 20)],
            4096,
            64 << 20,
        );
        let lens: Vec<u64> = got.iter().map(|c| c.len).collect();
        assert_eq!(lens, [64 << 20, 64 << 20, 22 << 20, 10 << 20]);
        assert_eq!(got[1].host, 0x1000_0000 + (64 << 20));
        assert_eq!(got[3].host, 0x8000_0000);
        // 1 GiB pages: one page per chunk.
        let got = chunks(&[(0x4000_0000, 3 << 30)], 1 << 30, 64 << 20);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|c| c.len == 1 << 30));
    }

    #[test]
    fn touching_faults_pages_in_and_keeps_their_contents() {
        let ram = super::super::backing::create(8 << 20, &MemoryBacking::default()).unwrap();
        let region = ram.mem.iter().next().unwrap();
        let base = region.as_ptr();
        let (before, _) = super::super::resident_bytes();
        // SAFETY: the test owns this fresh mapping; nothing else touches it.
        unsafe {
            base.write_volatile(0x5a);
            base.add(4096 + 7).write_volatile(0xa5);
        }
        touch(
            Chunk {
                host: base as usize,
                len: region.len(),
            },
            4096,
        );
        let (after, _) = super::super::resident_bytes();
        // SAFETY: as above.
        unsafe {
            assert_eq!(base.read_volatile(), 0x5a);
            assert_eq!(base.add(4096 + 7).read_volatile(), 0xa5);
            assert_eq!(base.add(8192).read_volatile(), 0);
        }
        assert!(
            after >= before + (7 << 20),
            "VmRSS grew from {before} to {after} only"
        );
    }

    #[test]
    fn prefault_makes_guest_ram_resident() {
        let ram = super::super::backing::create(96 << 20, &MemoryBacking::default()).unwrap();
        let (before, _) = super::super::resident_bytes();
        let stats = prefault(&ram.mem, ram.page_size, false, available_cpus()).unwrap();
        let (after, _) = super::super::resident_bytes();
        assert_eq!(stats.bytes, 96 << 20);
        assert!(stats.threads >= 1);
        assert!(!stats.stopped);
        assert!(
            after >= before + (90 << 20),
            "VmRSS grew from {before} to {after} only"
        );
    }

    #[test]
    fn the_two_ends_hand_out_each_chunk_once_bottom_first_or_top_first() {
        let regions = [(0x1000_0000usize, 6u64 << 20), (0x4000_0000, 3 << 20)];
        let two = TwoEnds::new(&regions, 4096, false);
        let top = |c: Option<Chunk>| c.map(|c| (c.host, c.len));
        assert_eq!(top(two.take(true)), Some((0x4020_0000, 1 << 20)));
        assert_eq!(top(two.take(false)), Some((0x1000_0000, 2 << 20)));
        assert_eq!(top(two.take(true)), Some((0x4000_0000, 2 << 20)));
        assert_eq!(top(two.take(false)), Some((0x1020_0000, 2 << 20)));
        assert_eq!(top(two.take(true)), Some((0x1040_0000, 2 << 20)));
        assert_eq!(two.take(false), None);
        assert_eq!(two.take(true), None);
        // 1 GiB hugetlbfs pages: one page a chunk.
        let two = TwoEnds::new(&[(0x4000_0000, 2 << 30)], 1 << 30, true);
        assert_eq!(two.take(true).map(|c| c.host), Some(0x8000_0000));
        assert_eq!(two.take(true).map(|c| c.host), Some(0x4000_0000));
        assert_eq!(two.take(false), None);
    }

    /// Pages of the mapping at `base` (`len` bytes) that are resident, by `mincore`.
    fn resident_pages(base: *mut u8, len: usize) -> Vec<bool> {
        let mut vec = vec![0u8; len.div_ceil(4096)];
        // SAFETY: `base` is the start of a live mapping of `len` bytes; `vec` has one byte per
        // page of it.
        let ret = unsafe { libc::mincore(base.cast(), len, vec.as_mut_ptr()) };
        assert_eq!(ret, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().map(|b| b & 1 == 1).collect()
    }

    #[test]
    fn from_both_ends_every_page_is_populated_once_and_a_stop_populates_none() {
        let ram = super::super::backing::create(64 << 20, &MemoryBacking::default()).unwrap();
        let region = ram.mem.iter().next().unwrap();
        let regions = [(region.as_ptr() as usize, region.len())];
        let len = region.len() as usize;
        let two = TwoEnds::new(&regions, ram.page_size, false);
        let stopped = two.from_top(2, &AtomicBool::new(true)).unwrap();
        assert!(stopped.stopped);
        assert_eq!(stopped.bytes, 0);
        assert!(!resident_pages(region.as_ptr(), len).iter().any(|&r| r));
        let (bottom, top) = std::thread::scope(|s| {
            let top = s.spawn(|| two.from_top(2, &AtomicBool::new(false)).unwrap());
            let bottom = two.from_bottom(&AtomicBool::new(false)).unwrap();
            (bottom, top.join().unwrap())
        });
        assert_eq!(bottom.bytes + top.bytes, 64 << 20, "{bottom:?} {top:?}");
        assert!(!bottom.stopped && !top.stopped);
        assert!(resident_pages(region.as_ptr(), len).iter().all(|&r| r));
        // Every chunk is taken: another pass has nothing left.
        assert_eq!(two.from_bottom(&AtomicBool::new(false)).unwrap().bytes, 0);
    }

    #[test]
    fn a_prefault_told_to_stop_populates_nothing_more() {
        let ram = super::super::backing::create(256 << 20, &MemoryBacking::default()).unwrap();
        let (before, _) = super::super::resident_bytes();
        let stats =
            prefault_until(&ram.mem, ram.page_size, false, 2, &AtomicBool::new(true)).unwrap();
        let (after, _) = super::super::resident_bytes();
        assert!(stats.stopped);
        assert_eq!(stats.bytes, 0);
        assert!(
            after < before + (64 << 20),
            "VmRSS grew from {before} to {after}"
        );
    }
}
