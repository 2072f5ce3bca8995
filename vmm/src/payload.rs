//! The guest's payload (kernel, then initramfs) goes into guest RAM on a thread of its own,
//! started as soon as guest RAM exists, while the main thread creates the VM and opens, resets
//! and attaches the passed-through devices (a GPU's reset alone takes hundreds of
//! milliseconds). cloud-hypervisor overlaps the same two steps; loading after them made the
//! start pay for both in turn.

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arch::boot::{BootError, InitramfsPlacement, LoadedKernel};
use vm_memory::GuestMemoryMmap;

use crate::Error;

/// What the loader put into guest RAM, and how long each part took.
pub struct Payload {
    /// The kernel's format and placement.
    pub kernel: LoadedKernel,
    /// Time to load the kernel.
    pub kernel_took: Duration,
    /// Where the initramfs went, if there is one.
    pub initramfs: Option<InitramfsPlacement>,
    /// Time to load the initramfs.
    pub initramfs_took: Duration,
}

/// A payload load in progress. [`PayloadLoad::wait`] gives its result; dropping it waits for
/// the thread too, so the thread never writes into guest RAM that is being unmapped (declare
/// it after the guest RAM it loads into).
pub struct PayloadLoad {
    handle: Option<JoinHandle<Result<Payload, BootError>>>,
}

impl PayloadLoad {
    /// Starts loading `kernel` and then `initramfs` into `mem` (`memory_bytes` of RAM, for the
    /// initramfs' placement).
    pub fn start(
        mem: GuestMemoryMmap,
        kernel: PathBuf,
        initramfs: Option<PathBuf>,
        memory_bytes: u64,
    ) -> Result<Self, Error> {
        let handle = std::thread::Builder::new()
            .name("payload".to_string())
            .spawn(move || load(&mem, &kernel, initramfs.as_deref(), memory_bytes))
            .map_err(Error::PayloadThread)?;
        Ok(Self {
            handle: Some(handle),
        })
    }

    /// Waits for the load to end and gives what it loaded, or why it could not.
    pub fn wait(mut self) -> Result<Payload, Error> {
        let handle = self.handle.take().expect("taken only here and in drop");
        match handle.join() {
            Ok(result) => Ok(result?),
            // A panic in the loader is viaduct's bug: it goes on as the panic it was.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for PayloadLoad {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// The thread's work: the kernel first (the initramfs goes after it), then the initramfs.
fn load(
    mem: &GuestMemoryMmap,
    kernel: &std::path::Path,
    initramfs: Option<&std::path::Path>,
    memory_bytes: u64,
) -> Result<Payload, BootError> {
    let started = Instant::now();
    let loaded = arch::boot::load_kernel(mem, kernel)?;
    let kernel_took = started.elapsed();
    let started = Instant::now();
    let initramfs = initramfs
        .map(|path| arch::boot::load_initramfs(mem, path, &loaded, memory_bytes))
        .transpose()?;
    Ok(Payload {
        kernel: loaded,
        kernel_took,
        initramfs,
        initramfs_took: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn ram() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    #[test]
    fn a_kernel_that_cannot_be_read_is_an_error_from_wait() {
        let load =
            PayloadLoad::start(ram(), "/nonexistent/vmlinux".into(), None, 64 << 20).unwrap();
        match load.wait() {
            Err(Error::Boot(BootError::KernelRead { path, .. })) => {
                assert_eq!(path, PathBuf::from("/nonexistent/vmlinux"))
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("loaded a kernel that does not exist"),
        }
    }

    #[test]
    fn a_load_dropped_unwaited_is_joined() {
        // Not a kernel at all: the thread fails, and drop must still join it without a panic.
        let file = std::env::temp_dir().join(format!("viaduct-payload-{}", std::process::id()));
        std::fs::write(&file, b"not a kernel").unwrap();
        drop(PayloadLoad::start(ram(), file.clone(), None, 64 << 20).unwrap());
        std::fs::remove_file(file).unwrap();
    }
}
