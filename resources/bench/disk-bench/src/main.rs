//! `disk-bench DEVICE MIB SECONDS`: the rig guest's block benchmark (resources/bench/disk-io.sh).
//!
//! Runs four tests on the first MIB MiB of DEVICE, each for SECONDS, one request at a time
//! (queue depth 1), 4 KiB each, with O_DIRECT so that every request reaches the virtio disk:
//! sequential read, sequential write, random read, random write (offsets from a fixed-seed
//! xorshift, so both VMMs see the same sequence). Prints one line per test,
//! `GUEST-BENCH=<test>,<MB/s>,<IOPS>`, or `GUEST-ERROR=disk-bench: …`. The writes overwrite
//! the region (each block gets its own number in its first 8 bytes).
//!
//! Built static (no libc at run time) because the guest is a busybox initramfs.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

/// Bytes per request.
const BLOCK: usize = 4096;
/// `O_DIRECT` on x86_64 Linux.
const O_DIRECT: i32 = 0o40000;

/// A 4 KiB buffer aligned for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    layout: Layout,
}

impl Aligned {
    fn new() -> Self {
        let layout = Layout::from_size_align(BLOCK, BLOCK).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Self { ptr, layout }
    }

    fn slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` holds `BLOCK` bytes we own for as long as `self` lives.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, BLOCK) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

fn run(
    file: &File,
    blocks: u64,
    seconds: u64,
    random: bool,
    write: bool,
) -> std::io::Result<(f64, f64)> {
    let mut buf = Aligned::new();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = 0u64;
    let mut done = 0u64;
    let deadline = Duration::from_secs(seconds);
    let start = Instant::now();
    while start.elapsed() < deadline {
        // 64 requests between clock reads.
        for _ in 0..64 {
            let block = if random {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % blocks
            } else {
                let b = next;
                next = (next + 1) % blocks;
                b
            };
            let at = block * BLOCK as u64;
            if write {
                buf.slice()[..8].copy_from_slice(&block.to_le_bytes());
                file.write_all_at(buf.slice(), at)?;
            } else {
                file.read_exact_at(buf.slice(), at)?;
            }
            done += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = done as f64 * BLOCK as f64;
    Ok((bytes / secs / 1e6, done as f64 / secs))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        println!("GUEST-ERROR=disk-bench: usage: disk-bench DEVICE MIB SECONDS");
        return;
    }
    let (Ok(mib), Ok(seconds)) = (args[2].parse::<u64>(), args[3].parse::<u64>()) else {
        println!("GUEST-ERROR=disk-bench: MIB and SECONDS must be whole numbers");
        return;
    };
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_DIRECT)
        .open(&args[1])
    {
        Ok(f) => f,
        Err(e) => {
            println!("GUEST-ERROR=disk-bench: cannot open {}: {e}", args[1]);
            return;
        }
    };
    let blocks = (mib << 20) / BLOCK as u64;
    for (name, random, write) in [
        ("seq-read", false, false),
        ("seq-write", false, true),
        ("rand-read", true, false),
        ("rand-write", true, true),
    ] {
        match run(&file, blocks.max(1), seconds, random, write) {
            Ok((mbps, iops)) => println!("GUEST-BENCH={name},{mbps:.1},{iops:.0}"),
            Err(e) => println!("GUEST-ERROR=disk-bench: {name}: {e}"),
        }
    }
}
