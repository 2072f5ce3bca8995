//! virtio-rng (entropy device): one request queue of 256 entries whose device-writable buffers
//! the worker fills from a host source (`--rng src=`, by default `/dev/urandom`), as
//! cloud-hypervisor does. Offered features: VERSION_1 only; there is no configuration space.
//!
//! A chain holding a device-readable descriptor, or buffers outside guest memory, is completed
//! with length 0 (the guest driver then asks again); at most [`MAX_BYTES_PER_REQUEST`] bytes
//! are given per chain, so a guest cannot make the host read gigabytes for one request.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::{DescriptorChain, Writer};
use vmm_sys_util::epoll::{Epoll, EventSet};

use crate::virtio::event_worker::{serve_queue, watch, EventHandler, EventWorker};
use crate::virtio::{
    features, ActivateError, ActiveQueue, GuestMemory, VirtioDevice, VirtioInterrupt,
};

/// Entries of the request queue (cloud-hypervisor's size).
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes written into one chain.
pub const MAX_BYTES_PER_REQUEST: usize = 64 << 10;

/// Why the entropy source could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("virtio-rng: cannot open the entropy source {} for reading: {source}", path.display())]
pub struct RngError {
    /// The source.
    pub path: PathBuf,
    /// What `open` said.
    #[source]
    pub source: std::io::Error,
}

/// A virtio-rng device (type 4).
pub struct VirtioRng {
    name: String,
    source: Arc<File>,
    queue_sizes: [u16; 1],
    worker: Option<EventWorker>,
}

impl VirtioRng {
    /// Opens `path` (a character device such as /dev/urandom, a FIFO or a file) as the source.
    pub fn open(path: &Path) -> Result<Self, RngError> {
        let file = File::open(path).map_err(|source| RngError {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::from_file(file))
    }

    /// Serves entropy read from `source`.
    pub fn from_file(source: File) -> Self {
        Self {
            name: "rng".to_string(),
            source: Arc::new(source),
            queue_sizes: [QUEUE_SIZE],
            worker: None,
        }
    }
}

impl VirtioDevice for VirtioRng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn features(&self) -> u64 {
        features::VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemory>,
        _acked_features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        self.reset();
        let Some(queue) = queues.into_iter().find(|q| q.index == 0) else {
            return Err(ActivateError::MissingQueue {
                device: self.name.clone(),
                queue: 0,
            });
        };
        let worker_err = |source| ActivateError::Worker {
            device: "rng".to_string(),
            source,
        };
        let epoll = Epoll::new().map_err(worker_err)?;
        watch(&epoll, queue.notify.as_raw_fd(), 0).map_err(worker_err)?;
        let worker = RngWorker {
            name: self.name.clone(),
            mem,
            queue,
            interrupt,
            source: self.source.clone(),
        };
        self.worker =
            Some(EventWorker::spawn("virtio-rng".to_string(), epoll, worker).map_err(worker_err)?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

struct RngWorker {
    name: String,
    mem: Arc<GuestMemory>,
    queue: ActiveQueue,
    interrupt: Arc<dyn VirtioInterrupt>,
    source: Arc<File>,
}

impl RngWorker {
    fn process(&mut self) {
        let (mem, name, source) = (&*self.mem, &self.name, &*self.source);
        serve_queue(&mut self.queue, mem, &*self.interrupt, name, |chain| {
            fill(name, mem, chain, source)
        });
    }
}

impl EventHandler for RngWorker {
    fn name(&self) -> &str {
        &self.name
    }

    fn started(&mut self, _epoll: &Epoll) {
        self.process();
    }

    fn event(&mut self, _epoll: &Epoll, _token: u64, _events: EventSet) {
        let _ = self.queue.notify.read();
        self.process();
    }
}

/// Fills the writable buffers of `chain` from `source`; returns the bytes written.
fn fill(name: &str, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>, source: &File) -> u32 {
    if chain.clone().any(|d| !d.is_write_only()) {
        crate::warn_limited!("{name}: a request with a device-readable buffer; completed empty");
        return 0;
    }
    let mut writer = match Writer::new(mem, chain) {
        Ok(w) => w,
        Err(e) => {
            crate::warn_limited!("{name}: unusable request buffers, completed empty: {e}");
            return 0;
        }
    };
    let want = writer.available_bytes().min(MAX_BYTES_PER_REQUEST);
    let mut buf = vec![0u8; want];
    let mut got = 0;
    let mut source = source;
    while got < want {
        match source.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                crate::warn_limited!("{name}: reading the entropy source failed: {e}");
                break;
            }
        }
    }
    match writer.write_all(&buf[..got]) {
        Ok(()) => got as u32,
        Err(e) => {
            crate::warn_limited!("{name}: cannot write entropy into the guest's buffer: {e}");
            0
        }
    }
}

#[cfg(test)]
mod tests;
