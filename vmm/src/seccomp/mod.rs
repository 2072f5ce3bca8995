//! seccomp: each viaduct thread confines itself to the system calls its kind needs before the
//! guest can reach it (`--seccomp true|false|log`, cloud-hypervisor's flag). A guest that
//! finds a bug in a device model then meets a thread that cannot open files, exec or connect
//! sockets it never needed.
//!
//! The kinds ([`ThreadKind`]): the VMM thread (event loop and teardown), vCPUs (KVM_RUN and
//! device emulation, which moves BARs and starts device workers), the API threads (which attach
//! and detach devices) and device workers (virtio queues). A thread keeps the filters of the
//! thread that spawned it, so a worker started by a vCPU is bound by both. With `true` a
//! forbidden call stops viaduct with one line naming the thread and the call (a SIGSYS
//! handler; `SECCOMP_RET_TRAP`); with `log` the kernel logs it (dmesg: `audit: type=1326 …
//! syscall=N`) and lets it through, which is how the allow-lists in [`rules`] are found.

mod report;
mod rules;

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// `--seccomp`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// `true`: a forbidden system call stops viaduct.
    #[default]
    Enforce,
    /// `log`: forbidden calls are logged by the kernel and allowed.
    Log,
    /// `false`: no filters.
    Off,
}

/// Which allow-list a thread gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The VMM thread: event loop, signals, teardown.
    Vmm,
    /// A vCPU.
    Vcpu,
    /// The API's accepting and connection threads.
    Api,
    /// A device worker serving virtio queues.
    Worker,
}

impl ThreadKind {
    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
            ThreadKind::Worker => "device worker",
        }
    }
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules (a bug in the lists).
    #[error("cannot build the seccomp filter of the {kind} threads")]
    Build {
        /// The thread kind.
        kind: &'static str,
        /// What seccompiler said.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error(
        "cannot install the seccomp filter of the {kind} threads (a kernel without \
         CONFIG_SECCOMP_FILTER? run with --seccomp false)"
    )]
    Install {
        /// The thread kind.
        kind: &'static str,
        /// What seccompiler said.
        #[source]
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler that reports forbidden system calls")]
    Handler(#[source] std::io::Error),
}

/// The BPF program for `kind` under `mode` (`None` when `mode` is off).
pub fn program(kind: ThreadKind, mode: SeccompMode) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Off => return Ok(None),
        SeccompMode::Enforce => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
    };
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = rules::allowed(kind)
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    let build = |source| SeccompError::Build {
        kind: kind.name(),
        source,
    };
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(build)?;
    let program: BpfProgram = filter.try_into().map_err(build)?;
    Ok(Some(program))
}

/// The compiled filters of every thread kind, built once before any thread starts (so a bad
/// list fails at start, not in a thread) and applied by each thread to itself.
#[derive(Clone)]
pub struct Filters {
    mode: SeccompMode,
    programs: Vec<(ThreadKind, BpfProgram)>,
}

impl Filters {
    /// Every kind's filter under `mode` (none when off); installs the SIGSYS reporter.
    pub fn new(mode: SeccompMode) -> Result<Self, SeccompError> {
        let mut programs = Vec::new();
        for kind in [
            ThreadKind::Vmm,
            ThreadKind::Vcpu,
            ThreadKind::Api,
            ThreadKind::Worker,
        ] {
            if let Some(p) = program(kind, mode)? {
                programs.push((kind, p));
            }
        }
        if mode == SeccompMode::Enforce {
            install_reporter()?;
        }
        Ok(Self { mode, programs })
    }

    /// Confines the calling thread to `kind`'s calls, then runs the self-test for `kind`.
    pub fn apply(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let Some((_, program)) = self.programs.iter().find(|(k, _)| *k == kind) else {
            return Ok(());
        };
        report::set_thread_kind(kind);
        seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
            kind: kind.name(),
            source,
        })?;
        log::debug!("seccomp: {} thread confined ({:?})", kind.name(), self.mode);
        self_test(kind);
        Ok(())
    }

    /// The mode the filters were built for.
    pub fn mode(&self) -> SeccompMode {
        self.mode
    }
}

/// Installs the SIGSYS handler that turns a forbidden call into one line and exit status 1.
pub fn install_reporter() -> Result<(), SeccompError> {
    report::install().map_err(SeccompError::Handler)
}

/// `VIADUCT_SECCOMP_SELFTEST=<kind>`: the thread of that kind makes one system call no list
/// allows, right after confining itself, so the rig can prove that a forbidden call is caught
/// (and, with `--seccomp log`, logged and survived). Nothing else reads this variable.
pub fn self_test(kind: ThreadKind) {
    if std::env::var("VIADUCT_SECCOMP_SELFTEST").ok().as_deref() == Some(kind.name()) {
        log::warn!(
            "seccomp self-test: the {} thread calls personality(2), which no filter allows",
            kind.name()
        );
        // SAFETY: personality(0xffffffff) only queries the execution domain.
        unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffu64) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_in_both_modes() {
        for kind in [
            ThreadKind::Vmm,
            ThreadKind::Vcpu,
            ThreadKind::Api,
            ThreadKind::Worker,
        ] {
            for mode in [SeccompMode::Enforce, SeccompMode::Log] {
                let p = program(kind, mode).unwrap().unwrap();
                assert!(p.len() > 10, "{kind:?}");
            }
            assert!(program(kind, SeccompMode::Off).unwrap().is_none());
        }
    }

    #[test]
    fn workers_cannot_open_files_or_spawn_threads() {
        let worker = rules::allowed(ThreadKind::Worker);
        for forbidden in [
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_clone3,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_ptrace,
        ] {
            assert!(!worker.contains(&forbidden), "{forbidden}");
        }
        assert!(worker.contains(&libc::SYS_preadv));
    }

    #[test]
    fn threads_that_start_workers_let_them_confine_themselves() {
        // A worker keeps the filter of the thread that started it and adds its own, so what
        // it may do is the intersection: every spawning kind must allow all of the worker's
        // calls, and seccomp(2) itself.
        let worker = rules::allowed(ThreadKind::Worker);
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Api] {
            let allowed = rules::allowed(kind);
            assert!(allowed.contains(&libc::SYS_seccomp), "{kind:?}");
            assert!(allowed.contains(&libc::SYS_clone3), "{kind:?}");
            for nr in &worker {
                assert!(allowed.contains(nr), "{kind:?} lacks worker call {nr}");
            }
        }
    }

    #[test]
    fn no_kind_allows_what_viaduct_never_does() {
        for kind in [
            ThreadKind::Vmm,
            ThreadKind::Vcpu,
            ThreadKind::Api,
            ThreadKind::Worker,
        ] {
            let allowed = rules::allowed(kind);
            for never in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_ptrace,
                libc::SYS_connect,
                libc::SYS_personality,
                libc::SYS_mount,
                libc::SYS_init_module,
                libc::SYS_bpf,
            ] {
                assert!(!allowed.contains(&never), "{kind:?} allows {never}");
            }
        }
    }

    #[test]
    fn a_confined_thread_is_stopped_at_a_forbidden_call() {
        // In a child process: the filter is inherited by nothing else, and the child's death
        // by the report's exit status is what is checked.
        let program = program(ThreadKind::Worker, SeccompMode::Enforce)
            .unwrap()
            .unwrap();
        // SAFETY: fork in a test; the child allocates nothing (the program is built above) and
        // only installs a handler, the filter, and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            report::set_thread_kind(ThreadKind::Worker);
            let ok = report::install().is_ok() && seccompiler::apply_filter(&program).is_ok();
            if ok {
                // SAFETY: a forbidden call; the SIGSYS handler ends the process.
                unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffu64) };
            }
            // Reached only if the call was not caught.
            // SAFETY: _exit ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(42) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "{status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), report::EXIT_STATUS);
    }
}
