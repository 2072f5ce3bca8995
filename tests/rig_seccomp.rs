//! seccomp in the nested rig: every other rig test already runs with the default
//! `--seccomp true` (a forbidden call would stop viaduct and fail that test); this one proves a
//! forbidden call is caught. `VIADUCT_SECCOMP_SELFTEST=<kind>` makes the thread of that kind
//! call personality(2) right after confining itself: with `--seccomp true` viaduct stops with
//! one line naming the thread and the call and exit status 1, before the guest ran; with
//! `--seccomp log` the kernel logs the call (audit type 1326, with the thread's name) and the
//! guest boots and powers off as usual.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;

use common::{marker_token, run_rig, viaduct_command};

fn guest(marker: &str, seccomp: &str) -> String {
    format!(
        "--kernel /guest/bzImage --initramfs /guest/initramfs.cpio.gz \
         --cmdline \"console=ttyS0 quiet viaduct_marker={marker} viaduct_action=poweroff\" \
         --cpus boot=1 --memory size=256M --serial tty --console off --seccomp {seccomp}"
    )
}

#[test]
fn a_forbidden_system_call_stops_viaduct_and_log_mode_records_it() {
    let (m1, m2, m3) = (marker_token(), marker_token(), marker_token());
    let scenario = format!(
        "export VIADUCT_SECCOMP_SELFTEST=vcpu\n{}{}export VIADUCT_SECCOMP_SELFTEST=vmm\n{}",
        viaduct_command(&guest(&m1, "true")),
        viaduct_command(&guest(&m2, "log")),
        viaduct_command(&guest(&m3, "true")),
    );
    let all = run_rig(
        "a_forbidden_system_call_stops_viaduct_and_log_mode_records_it",
        &scenario,
    );
    let runs = all.viaduct_runs();
    assert_eq!(runs.len(), 3, "three viaduct runs\n{}", all.context());

    // Enforced, a vCPU: stopped before the guest's first instruction.
    let run = &runs[0];
    let context = run.context();
    assert_eq!(run.viaduct_exit(), Some(1), "{context}");
    let stderr = run.viaduct_stderr().join("\n");
    assert!(
        stderr.contains(
            "viaduct: error: seccomp: a vcpu thread made the forbidden system call 135 \
             (personality); viaduct stopped."
        ),
        "{context}"
    );
    assert_eq!(
        run.guest_marker(),
        None,
        "the guest must not have run\n{context}"
    );

    // Logged: the guest ran to its end and the kernel recorded the call with the thread name.
    let run = &runs[1];
    let context = run.context();
    assert_eq!(run.guest_marker(), Some(m2.as_str()), "{context}");
    assert_eq!(run.viaduct_exit(), Some(0), "{context}");
    let logged: Vec<&str> = all
        .log
        .lines()
        .filter(|l| l.contains("RIG-SECCOMP-LOGGED|"))
        .collect();
    assert!(
        logged
            .iter()
            .any(|l| l.contains("syscall=135") && l.contains("comm=\"vcpu0\"")),
        "no audit record of the vCPU's personality(2): {logged:?}\n{}",
        all.context()
    );
    // Nothing else was let through: the lists hold every call a normal run makes.
    assert!(
        logged.iter().all(|l| l.contains("syscall=135")),
        "calls outside the allow-lists: {logged:?}"
    );

    // Enforced, the VMM thread (confined just before the event loop, once the guest runs).
    let run = &runs[2];
    let context = run.context();
    assert_eq!(run.viaduct_exit(), Some(1), "{context}");
    assert!(
        run.viaduct_stderr()
            .iter()
            .any(|l| l.contains("seccomp: a vmm thread made the forbidden system call 135")),
        "{context}"
    );
}
