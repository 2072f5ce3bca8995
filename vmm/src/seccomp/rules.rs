//! The allow-lists: which system calls each kind of viaduct thread makes. Found by running
//! every rig test with `--seccomp log` and collecting what the kernel logged (docs/seccomp.md
//! says how to redo that); a call missing here shows up as a seccomp report naming it.

use super::ThreadKind;

/// What every thread needs: memory, locks, time, signals, its own exit, and writing a log line
/// or the seccomp report itself.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_futex,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_madvise,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_nanosleep,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_set_robust_list,
    libc::SYS_sigaltstack,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_getrandom,
    libc::SYS_rseq,
];

/// A device worker (virtio queues: files, block devices, taps, eventfds).
const WORKER: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_wait,
    libc::SYS_fcntl,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_ioctl,
    libc::SYS_lseek,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_preadv2,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_pwritev2,
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_fallocate,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
];

/// What attaches, moves and detaches devices (the VMM thread, the API, vCPUs serving config
/// writes, the eject thread): files in sysfs and /dev/vfio, KVM and VFIO ioctls, mappings,
/// eventfds, threads.
const DEVICE_MANAGEMENT: &[i64] = &[
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    // managed=on records what it bound in a state file (written aside, then renamed).
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_eventfd2,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_fstat,
    libc::SYS_ftruncate,
    libc::SYS_getcwd,
    libc::SYS_getdents64,
    libc::SYS_ioctl,
    libc::SYS_lseek,
    libc::SYS_memfd_create,
    libc::SYS_newfstatat,
    libc::SYS_openat,
    libc::SYS_pread64,
    libc::SYS_prctl,
    // A thread that starts another one confined (a vCPU starting a device worker) keeps its
    // own filter in the new thread, which then adds the worker's: seccomp(2) can only narrow.
    libc::SYS_seccomp,
    libc::SYS_pwrite64,
    libc::SYS_read,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_statx,
    libc::SYS_tgkill,
    libc::SYS_prlimit64,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

/// The API threads: the listening socket and connections on top of device management.
const API: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
];

/// The VMM thread's event loop and teardown.
const VMM: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_wait,
    libc::SYS_wait4,
    libc::SYS_kill,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// vCPUs: KVM_RUN, and device emulation (config writes that move BARs, program MSI-X and start
/// device workers).
const VCPU: &[i64] = &[];

/// Every system call `kind` may make.
pub fn allowed(kind: ThreadKind) -> Vec<i64> {
    let parts: &[&[i64]] = match kind {
        ThreadKind::Vmm => &[COMMON, DEVICE_MANAGEMENT, VMM, WORKER],
        ThreadKind::Vcpu => &[COMMON, DEVICE_MANAGEMENT, VCPU, WORKER],
        ThreadKind::Api => &[COMMON, DEVICE_MANAGEMENT, API, WORKER],
        ThreadKind::Worker => &[COMMON, WORKER],
    };
    let mut all: Vec<i64> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    all.sort_unstable();
    all.dedup();
    all
}
