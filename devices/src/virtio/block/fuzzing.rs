//! The request path without the worker thread, for the fuzz targets in tests/fuzz (built only
//! with the `fuzzing` feature): a fuzz input lays out a ring and its buffers in guest memory,
//! and every request on it is served exactly as the worker serves it.

use virtio_queue::{Queue, QueueT};

use super::{request, VirtioBlock};
use crate::virtio::GuestMemory;

/// Serves every request available on `queue` (as the worker's `process` does: pop, execute,
/// add to the used ring) and returns how many chains were popped.
pub fn serve_queue(block: &VirtioBlock, mem: &GuestMemory, queue: &mut Queue) -> usize {
    let mut popped = 0;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let len = request::execute(&block.disk, mem, chain);
        // A used ring outside guest memory is the guest's problem, as in the worker.
        let _ = queue.add_used(mem, head, len);
        popped += 1;
    }
    popped
}
