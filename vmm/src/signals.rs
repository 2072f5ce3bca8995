//! Signals: SIGTERM/SIGINT/SIGHUP stop the VM through the exit notifier, a real-time signal
//! kicks vCPU threads out of KVM_RUN at shutdown, and SIGWINCH (the terminal was resized) wakes
//! the event loop so that the virtio console's size follows.
//!
//! The termination handlers are installed first thing, before guest RAM is made: a signal
//! during a long step before the guest runs (a prefault of many GiB, opening devices bound with
//! `managed=on`) is then recorded instead of killing viaduct with no message and no teardown.
//! The step looks at [`terminating`], and the exit notifier, once there is one, is told at once.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::thread::JoinHandle;

use devices::exit::ExitNotifier;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::Error;

/// The exit eventfd the termination handler writes to (-1 until installed).
static EXIT_EVENT_FD: AtomicI32 = AtomicI32::new(-1);
/// The termination signal received, 0 if none.
static RECEIVED: AtomicI32 = AtomicI32::new(0);
/// Set with [`RECEIVED`], for the steps that look at an `AtomicBool` between chunks of work.
static TERMINATING: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(num: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    RECEIVED.store(num, Ordering::SeqCst);
    TERMINATING.store(true, Ordering::SeqCst);
    let fd = EXIT_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` outlives the call; the fd is the exit
        // eventfd, kept open for the life of the process by the leaked clone below.
        unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
    }
}

/// The eventfd the SIGWINCH handler writes to (-1 until installed).
static WINCH_EVENT_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_winch(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let fd = WINCH_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` outlives the call; the fd is an eventfd
        // kept open for the life of the process by the leaked clone in `install_winch`.
        unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
    }
}

/// Makes `event` readable on every SIGWINCH.
pub fn install_winch(event: &vmm_sys_util::eventfd::EventFd) -> Result<(), Error> {
    let fd = event.try_clone().map_err(Error::EventFd)?;
    WINCH_EVENT_FD.store(std::os::fd::AsRawFd::as_raw_fd(&fd), Ordering::SeqCst);
    std::mem::forget(fd);
    register_signal_handler(libc::SIGWINCH, on_winch).map_err(|source| Error::SignalHandler {
        signal: libc::SIGWINCH,
        source,
    })
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the handlers: from now on a termination signal is recorded ([`received`],
/// [`terminating`]) and, once [`stop_vm_on_termination`] has run, stops the VM like a failure
/// would.
pub fn install() -> Result<(), Error> {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        register_signal_handler(sig, on_terminate).map_err(|source| Error::SignalHandler {
            signal: sig,
            source,
        })?;
    }
    register_signal_handler(SIGRTMIN(), on_kick).map_err(|source| Error::SignalHandler {
        signal: SIGRTMIN(),
        source,
    })?;
    Ok(())
}

/// Makes a termination signal stop the VM through `exit`; one received before this (while the
/// VM was being built) stops it now.
pub fn stop_vm_on_termination(exit: &ExitNotifier) -> Result<(), Error> {
    let fd = exit.event().try_clone().map_err(Error::EventFd)?;
    EXIT_EVENT_FD.store(std::os::fd::AsRawFd::as_raw_fd(&fd), Ordering::SeqCst);
    // The handler may run at any time until exit, so its descriptor is never closed.
    std::mem::forget(fd);
    // A handler that ran before the store above has set RECEIVED (both are SeqCst), so one of
    // the two writes: a second write only adds to the eventfd's count.
    if RECEIVED.load(Ordering::SeqCst) != 0 {
        let _ = exit.event().write(1);
    }
    Ok(())
}

/// Set once a termination signal has been received: a long step before the guest runs looks
/// at it between chunks and ends early.
pub fn terminating() -> &'static AtomicBool {
    &TERMINATING
}

/// The name of the termination signal that was received, if any.
pub fn received() -> Option<&'static str> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGTERM => Some("SIGTERM"),
        libc::SIGINT => Some("SIGINT"),
        libc::SIGHUP => Some("SIGHUP"),
        _ => Some("unknown"),
    }
}

/// Interrupts the vCPU thread's KVM_RUN (it returns EINTR and the thread checks its stop flag).
pub fn kick<T>(handle: &JoinHandle<T>) {
    let _ = handle.kill(SIGRTMIN());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_before_the_vm_exists_is_kept_and_stops_the_vm_once_it_does() {
        install().unwrap();
        let exit = ExitNotifier::new().unwrap();
        // SAFETY: raise(3) sends the signal to this thread; the handler installed above runs
        // before it returns.
        assert_eq!(unsafe { libc::raise(libc::SIGHUP) }, 0);
        assert_eq!(received(), Some("SIGHUP"));
        assert!(terminating().load(Ordering::SeqCst));
        assert!(
            exit.event().read().is_err(),
            "the exit notifier was not told yet"
        );
        stop_vm_on_termination(&exit).unwrap();
        assert_eq!(exit.event().read().unwrap(), 1);
    }
}
