//! The hook through which the VMM confines every device worker thread as it starts (seccomp),
//! without the device models knowing what confinement is: a worker calls [`worker_started`]
//! first thing and stops at once if that fails.

use std::sync::OnceLock;

/// What the VMM runs at the start of each worker: `Err` with the reason when the thread could
/// not be confined.
pub type WorkerStart = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

static WORKER_START: OnceLock<WorkerStart> = OnceLock::new();

/// Sets the hook (once per process; a second call is ignored and returns false).
pub fn set_worker_start(hook: WorkerStart) -> bool {
    WORKER_START.set(hook).is_ok()
}

/// Runs the hook in the calling worker thread; false when the worker must not run (the reason
/// is logged).
pub fn worker_started(name: &str) -> bool {
    match WORKER_START.get().map(|hook| hook()) {
        None | Some(Ok(())) => true,
        Some(Err(reason)) => {
            log::error!(
                "{name}: the worker thread cannot run confined, so it does not run: {reason}"
            );
            false
        }
    }
}
