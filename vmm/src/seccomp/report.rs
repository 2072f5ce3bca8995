//! The SIGSYS handler behind `--seccomp true`: the kernel stops a forbidden system call with
//! SIGSYS; the handler writes one line naming the thread and the call to stderr and ends the
//! process with [`EXIT_STATUS`]. Everything it does is async-signal-safe: no allocation, no
//! lock, only write(2) and _exit(2) (both on every allow-list).

use std::cell::Cell;

use super::ThreadKind;

/// viaduct's exit status after a forbidden system call (its usual "the VM failed" status).
pub const EXIT_STATUS: i32 = 1;

thread_local! {
    /// The calling thread's kind, for the report.
    static KIND: Cell<&'static str> = const { Cell::new("unconfined") };
}

/// Records the calling thread's kind for the report.
pub fn set_thread_kind(kind: ThreadKind) {
    KIND.with(|k| k.set(kind.name()));
}

/// Names of the calls a viaduct thread might plausibly make by mistake; others are reported by
/// number (`ausyscall N` names them).
fn syscall_name(nr: i64) -> &'static str {
    match nr {
        libc::SYS_personality => "personality",
        libc::SYS_openat => "openat",
        libc::SYS_open => "open",
        libc::SYS_socket => "socket",
        libc::SYS_connect => "connect",
        libc::SYS_bind => "bind",
        libc::SYS_execve => "execve",
        libc::SYS_clone => "clone",
        libc::SYS_clone3 => "clone3",
        libc::SYS_ioctl => "ioctl",
        libc::SYS_mmap => "mmap",
        libc::SYS_munmap => "munmap",
        libc::SYS_prctl => "prctl",
        libc::SYS_statx => "statx",
        libc::SYS_newfstatat => "newfstatat",
        libc::SYS_readlinkat => "readlinkat",
        libc::SYS_getdents64 => "getdents64",
        libc::SYS_unlinkat => "unlinkat",
        libc::SYS_sendmsg => "sendmsg",
        libc::SYS_recvmsg => "recvmsg",
        libc::SYS_seccomp => "seccomp",
        libc::SYS_fork => "fork",
        libc::SYS_vfork => "vfork",
        libc::SYS_ptrace => "ptrace",
        libc::SYS_mount => "mount",
        libc::SYS_kill => "kill",
        libc::SYS_tgkill => "tgkill",
        libc::SYS_accept4 => "accept4",
        libc::SYS_sendto => "sendto",
        libc::SYS_recvfrom => "recvfrom",
        libc::SYS_read => "read",
        libc::SYS_pread64 => "pread64",
        libc::SYS_pwrite64 => "pwrite64",
        libc::SYS_preadv => "preadv",
        libc::SYS_pwritev => "pwritev",
        libc::SYS_fsync => "fsync",
        libc::SYS_fdatasync => "fdatasync",
        libc::SYS_epoll_wait => "epoll_wait",
        libc::SYS_epoll_pwait => "epoll_pwait",
        libc::SYS_memfd_create => "memfd_create",
        libc::SYS_eventfd2 => "eventfd2",
        libc::SYS_fcntl => "fcntl",
        libc::SYS_mremap => "mremap",
        libc::SYS_wait4 => "wait4",
        _ => "",
    }
}

/// Appends `s` to `buf` at `*at`, as far as it fits.
fn put(buf: &mut [u8], at: &mut usize, s: &[u8]) {
    let n = s.len().min(buf.len() - *at);
    buf[*at..*at + n].copy_from_slice(&s[..n]);
    *at += n;
}

/// Appends `n` in decimal.
fn put_number(buf: &mut [u8], at: &mut usize, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    put(buf, at, &digits[i..]);
}

/// The report line for call `nr` made by a `kind` thread.
pub fn format_report(buf: &mut [u8], kind: &str, nr: i64) -> usize {
    let mut at = 0;
    put(buf, &mut at, b"viaduct: error: seccomp: a ");
    put(buf, &mut at, kind.as_bytes());
    put(buf, &mut at, b" thread made the forbidden system call ");
    put_number(buf, &mut at, nr as u64);
    let name = syscall_name(nr);
    if !name.is_empty() {
        put(buf, &mut at, b" (");
        put(buf, &mut at, name.as_bytes());
        put(buf, &mut at, b")");
    }
    put(
        buf,
        &mut at,
        b"; viaduct stopped. This is a viaduct bug: please report it; --seccomp log lets the call \
          through and logs it\n",
    );
    at
}

/// `siginfo_t`'s `si_syscall` on x86-64 (the `_sigsys` member: `_call_addr` at 16, `_syscall`
/// at 24); the libc crate does not expose it.
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS with SA_SIGINFO; `_syscall` is an
    // int at SI_SYSCALL_OFFSET on x86-64.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read()
    };
    let kind = KIND.try_with(Cell::get).unwrap_or("unknown");
    let mut buf = [0u8; 256];
    let len = format_report(&mut buf, kind, i64::from(nr));
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `buf` outlives the call.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len);
        libc::_exit(EXIT_STATUS);
    }
}

/// Installs the handler (process-wide).
pub fn install() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler is an extern "C" fn of the SA_SIGINFO
    // signature; sigaction only reads `action`.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_the_thread_and_the_call() {
        let mut buf = [0u8; 256];
        let n = format_report(&mut buf, "vcpu", libc::SYS_personality);
        let line = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(
            line.starts_with(
                "viaduct: error: seccomp: a vcpu thread made the forbidden system call 135 \
                 (personality); viaduct stopped."
            ),
            "{line}"
        );
        assert!(line.ends_with('\n'));
        let n = format_report(&mut buf, "api", 999);
        assert!(std::str::from_utf8(&buf[..n])
            .unwrap()
            .contains("system call 999; "));
    }
}
