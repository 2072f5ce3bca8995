//! Boot tests in the nested rig (see `docs/rig.md`): viaduct, running in a Linux rig host with
//! nested KVM, boots the Debian cloud kernel with a busybox initramfs, and the guest reports
//! what it sees (CPUs, memory, its command line) before it powers off, reboots or panics.
//! Each test takes about a minute; they fail, never skip, when the rig cannot run.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;

use common::{marker_token, run_rig, viaduct_command, RigRun, VIADUCT_TIMED_OUT};

/// Guest RAM the boot tests ask for, in MiB.
const GUEST_MIB: u64 = 512;

/// Extra guest kernel arguments. `quiet` halves the boot time in the rig (every console byte
/// is a trip through two levels of virtualization); warnings, errors and panics still print.
/// `VIADUCT_RIG_GUEST_VERBOSE=1` drops it to see the full boot log.
fn guest_extra_cmdline() -> &'static str {
    match std::env::var("VIADUCT_RIG_GUEST_VERBOSE").as_deref() {
        Ok("1") => "",
        _ => " quiet",
    }
}

/// Runs the busybox guest with `kernel` under viaduct (2 vCPUs, 512 MiB, serial on the
/// terminal) and asks its init to do `action` once it has reported.
fn boot_guest(test_name: &str, kernel: &str, action: &str, marker: &str) -> RigRun {
    boot_guest_with(test_name, kernel, action, marker, "")
}

/// [`boot_guest`] with `extra` appended to the guest kernel command line.
fn boot_guest_with(
    test_name: &str,
    kernel: &str,
    action: &str,
    marker: &str,
    extra: &str,
) -> RigRun {
    let cmdline = format!(
        "console=ttyS0 viaduct_marker={marker} viaduct_action={action}{}{extra}",
        guest_extra_cmdline()
    );
    let scenario = viaduct_command(&format!(
        "--kernel {kernel} --initramfs /guest/initramfs.cpio.gz --cmdline \"{cmdline}\" \
         --cpus boot=2 --memory size={GUEST_MIB}M --serial tty --console off"
    ));
    run_rig(test_name, &scenario)
}

/// The guest came up with exactly what the command line asked for and powered off cleanly.
fn assert_booted_as_asked(run: &RigRun, marker: &str) {
    let context = run.context();
    assert_eq!(run.guest_marker(), Some(marker), "guest marker\n{context}");
    assert_eq!(run.guest_cpus(), Some(2), "guest online CPUs\n{context}");
    let asked_kb = GUEST_MIB * 1024;
    let memtotal_kb = run
        .guest_memtotal_kb()
        .unwrap_or_else(|| panic!("the guest printed no GUEST-MEMTOTAL-KB\n{context}"));
    assert!(
        memtotal_kb.abs_diff(asked_kb) <= asked_kb / 10,
        "guest MemTotal {memtotal_kb} KiB is not within 10% of {asked_kb} KiB\n{context}"
    );
    assert_eq!(
        run.viaduct_exit(),
        Some(0),
        "viaduct's exit status\n{context}"
    );
}

#[test]
fn boots_bzimage_with_two_cpus_and_512m() {
    let marker = marker_token();
    let run = boot_guest(
        "boots_bzimage_with_two_cpus_and_512m",
        "/guest/bzImage",
        "poweroff",
        &marker,
    );
    assert_booted_as_asked(&run, &marker);
}

#[test]
fn boots_pvh_vmlinux_with_two_cpus_and_512m() {
    let marker = marker_token();
    let run = boot_guest(
        "boots_pvh_vmlinux_with_two_cpus_and_512m",
        "/guest/vmlinux",
        "poweroff",
        &marker,
    );
    assert_booted_as_asked(&run, &marker);
}

#[test]
fn guest_panic_makes_viaduct_exit_nonzero() {
    let marker = marker_token();
    let run = boot_guest(
        "guest_panic_makes_viaduct_exit_nonzero",
        "/guest/bzImage",
        "panic",
        &marker,
    );
    let context = run.context();
    assert_eq!(
        run.guest_marker(),
        Some(marker.as_str()),
        "guest marker\n{context}"
    );
    // The guest finds the pvpanic device in ACPI (QEMU0001) and binds its driver.
    assert_ne!(
        run.guest("PVPANIC"),
        Some("none"),
        "no pvpanic device in the guest\n{context}"
    );
    let status = run
        .viaduct_exit()
        .unwrap_or_else(|| panic!("no VIADUCT-EXIT line\n{context}"));
    assert_ne!(status, 0, "viaduct exited 0 after a guest panic\n{context}");
    assert_ne!(
        status, VIADUCT_TIMED_OUT,
        "viaduct did not notice the guest panic and was killed by the timeout\n{context}"
    );
    assert!(
        run.position("GUEST-MARKER") < run.position("VIADUCT-EXIT"),
        "the guest's marker must come before viaduct exits\n{context}"
    );
}

#[test]
fn guest_reboot_exits_zero_and_says_so() {
    let marker = marker_token();
    let run = boot_guest(
        "guest_reboot_exits_zero_and_says_so",
        "/guest/bzImage",
        "reboot",
        &marker,
    );
    let context = run.context();
    assert_eq!(
        run.guest_marker(),
        Some(marker.as_str()),
        "guest marker\n{context}"
    );
    assert_eq!(
        run.viaduct_exit(),
        Some(0),
        "viaduct's exit status\n{context}"
    );
    // Only viaduct's own stderr counts: the guest kernel prints "reboot:" on the console too.
    assert!(
        run.viaduct_stderr()
            .iter()
            .any(|line| line.to_ascii_lowercase().contains("reboot")),
        "viaduct's stderr does not mention the reboot\n{context}"
    );
}

#[test]
fn guest_triple_fault_exits_nonzero_with_vcpu_state() {
    // `reboot=t` makes Linux reboot by loading an empty IDT and raising an exception: a triple
    // fault, which the platform did not ask for and viaduct reports as a failure.
    let marker = marker_token();
    let run = boot_guest_with(
        "guest_triple_fault_exits_nonzero_with_vcpu_state",
        "/guest/bzImage",
        "reboot",
        &marker,
        " reboot=t",
    );
    let context = run.context();
    assert_eq!(
        run.guest_marker(),
        Some(marker.as_str()),
        "guest marker\n{context}"
    );
    let status = run
        .viaduct_exit()
        .unwrap_or_else(|| panic!("no VIADUCT-EXIT line\n{context}"));
    assert_ne!(
        status, 0,
        "viaduct exited 0 after a triple fault\n{context}"
    );
    assert_ne!(
        status, VIADUCT_TIMED_OUT,
        "viaduct did not notice the triple fault and was killed by the timeout\n{context}"
    );
    let stderr = run.viaduct_stderr().join("\n");
    assert!(
        stderr.contains("triple fault"),
        "viaduct's stderr does not name the triple fault\n{context}"
    );
    assert!(
        stderr.contains("rip=") && stderr.contains("cr3="),
        "viaduct's stderr does not show the vCPU state\n{context}"
    );
    // KVM reset the vCPU before viaduct heard of it (SVM), and viaduct says so; the rig host's
    // own record (bounded.sh, `RIG-SHUTDOWN|`) has the RIP the guest shut down at: inside its
    // kernel.
    assert!(
        stderr.contains("those are a CPU's reset values"),
        "viaduct does not say the registers are the reset ones\n{context}"
    );
    let ktext = run
        .value("GUEST-KTEXT")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or_else(|| panic!("no GUEST-KTEXT line\n{context}"));
    let rip = run
        .log
        .lines()
        .filter(|l| l.starts_with("RIG-SHUTDOWN| "))
        .find_map(|l| l.split(" reason shutdown rip 0x").nth(1))
        .and_then(|r| u64::from_str_radix(r.split_whitespace().next()?, 16).ok())
        .unwrap_or_else(|| panic!("no RIG-SHUTDOWN line with the guest's RIP\n{context}"));
    assert!(
        (ktext..ktext + (64 << 20)).contains(&rip),
        "shutdown RIP {rip:#x} is not in the guest kernel's text at {ktext:#x}\n{context}"
    );
}
