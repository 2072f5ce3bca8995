//! The virtio console (hvc0) and virtio-rng in the nested rig, in one rig run with two viaduct
//! runs of the busybox guest:
//!
//! 1. `--console tty --serial off`, `console=hvc0 viaduct_console=hvc0`: the guest's init moves
//!    its report to /dev/hvc0, so every `GUEST-` line in the log crossed the virtio console
//!    (there is no UART); a line written to viaduct's stdin (a FIFO) is read back by the guest
//!    from hvc0; `/sys/class/misc/hw_random/rng_current` is `virtio_rng.0` and /dev/hwrng gives
//!    data, with the default `--rng`.
//! 2. `--console file=PATH --serial tty`: the guest writes a marker to /dev/hvc0 and it lands
//!    in the file (which held another boot's output before: it is truncated), not on the
//!    serial console; `--rng src=/dev/urandom` given explicitly.
//!
//! seccomp is on (the default) for both, so the console and rng workers run confined.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;

use common::{marker_token, run_rig, viaduct_command, RigRun};

const GUEST: &str = "--kernel /guest/bzImage --initramfs /guest/initramfs.cpio.gz --cpus boot=1 \
                     --memory size=512M";

/// The 256 bytes the guest read from /dev/hwrng are there and not all zero.
fn assert_hwrng_data(run: &RigRun) {
    let context = run.context();
    assert_eq!(
        run.guest("RNG-CURRENT"),
        Some("virtio_rng.0"),
        "the guest's hardware RNG\n{context}"
    );
    let hex = run.guest("HWRNG-HEX").unwrap_or("none");
    assert!(
        !hex.is_empty() && hex != "none" && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "no bytes read from /dev/hwrng: {hex}\n{context}"
    );
    assert_eq!(hex.len(), 512, "256 bytes read from /dev/hwrng\n{context}");
    assert!(
        hex.chars().any(|c| c != '0'),
        "/dev/hwrng gave only zeros\n{context}"
    );
}

#[test]
fn hvc0_serves_tty_and_file_consoles_and_the_guest_gets_entropy() {
    let (m1, m2) = (marker_token(), marker_token());
    let tty_args = format!(
        "{GUEST} --cmdline \"console=hvc0 quiet viaduct_console=hvc0 viaduct_marker={m1} \
         viaduct_action=rng,hvc0-read\" --serial off --console tty </tmp/hvc0-in"
    );
    let file_args = format!(
        "{GUEST} --cmdline \"console=ttyS0 quiet viaduct_marker={m2} \
         viaduct_action=hvc0-write,rng\" --serial tty --console file=/tmp/hvc0.log \
         --rng src=/dev/urandom"
    );
    let scenario = format!(
        "mkfifo /tmp/hvc0-in\n\
         printf 'typed-%s\\n' {m1} >/tmp/hvc0-in &\n\
         {}\
         echo stale-output-of-another-boot >/tmp/hvc0.log\n\
         {}\
         sed 's/^/RIG-HVC0-FILE| /' /tmp/hvc0.log\n",
        viaduct_command(&tty_args),
        viaduct_command(&file_args),
    );
    let all = run_rig(
        "hvc0_serves_tty_and_file_consoles_and_the_guest_gets_entropy",
        &scenario,
    );
    let runs = all.viaduct_runs();
    assert_eq!(runs.len(), 2, "two viaduct runs\n{}", all.context());

    // 1. --console tty, no UART: the whole report came over hvc0.
    let run = &runs[0];
    let context = run.context();
    assert_eq!(run.viaduct_exit(), Some(0), "{context}");
    assert_eq!(run.guest("CONSOLE"), Some("hvc0"), "{context}");
    assert_eq!(run.guest_marker(), Some(m1.as_str()), "{context}");
    assert!(
        run.position("GUEST-CONSOLE") < run.position("GUEST-MARKER"),
        "the report follows the switch to hvc0\n{context}"
    );
    let expected = format!("typed-{m1}");
    assert_eq!(
        run.guest("HVC0-INPUT"),
        Some(expected.as_str()),
        "viaduct's stdin reached the guest through hvc0\n{context}"
    );
    let ids: Vec<String> = run.guest_pci_devices().into_iter().map(|d| d.id).collect();
    for id in ["1af4:1043", "1af4:1044"] {
        assert!(ids.iter().any(|i| i == id), "no {id} in {ids:?}\n{context}");
    }
    assert_hwrng_data(run);

    // 2. --console file=: the marker went to the file only, which was truncated first.
    let run = &runs[1];
    let context = run.context();
    assert_eq!(run.viaduct_exit(), Some(0), "{context}");
    assert_eq!(run.guest_marker(), Some(m2.as_str()), "{context}");
    assert_eq!(run.guest("HVC0-WRITTEN"), Some("1"), "{context}");
    let file_line = format!("RIG-HVC0-FILE| GUEST-HVC0-MARKER={m2}");
    assert!(
        run.log.contains(&file_line),
        "the marker is not in the console file\n{context}"
    );
    assert!(
        !run.log.contains("stale-output-of-another-boot"),
        "the console file was not truncated\n{context}"
    );
    let on_serial = run
        .log
        .lines()
        .filter(|l| l.contains("GUEST-HVC0-MARKER=") && !l.contains("RIG-HVC0-FILE|"))
        .count();
    assert_eq!(
        on_serial, 0,
        "hvc0 output leaked to the serial console\n{context}"
    );
    assert_hwrng_data(run);
}
