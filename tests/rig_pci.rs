//! PCI segment tests in the nested rig (see `docs/rig.md`): viaduct boots the busybox guest with
//! several PCI segments and the guest reports which PCI domains it enumerated and the windows
//! its root bridges got (from its own `/proc/iomem` and `/proc/ioports`).

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;

use common::{marker_token, run_rig, viaduct_command, RigRun};

/// One root-bridge window as the guest's resource tree shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    domain: u16,
    start: u64,
    end: u64,
}

impl Window {
    fn size(&self) -> u64 {
        self.end - self.start + 1
    }
}

/// Parses `dddd:start-end` values of `GUEST-<key>=` lines.
fn windows(run: &RigRun, key: &str) -> Vec<Window> {
    run.values(&format!("GUEST-{key}"))
        .iter()
        .map(|v| {
            let (domain, range) = v.split_once(':').expect("dddd:start-end");
            let (start, end) = range.split_once('-').expect("start-end");
            Window {
                domain: u16::from_str_radix(domain, 16).expect("hex domain"),
                start: u64::from_str_radix(start, 16).expect("hex start"),
                end: u64::from_str_radix(end, 16).expect("hex end"),
            }
        })
        .collect()
}

/// Boots the guest with `pci_args` and returns the run after checking it powered off cleanly.
fn boot_with_segments(test_name: &str, pci_args: &str) -> RigRun {
    let marker = marker_token();
    let scenario = viaduct_command(&format!(
        "--kernel /guest/bzImage --initramfs /guest/initramfs.cpio.gz \
         --cmdline \"console=ttyS0 quiet viaduct_marker={marker} viaduct_action=poweroff\" \
         --cpus boot=1 --memory size=512M --serial tty --console off {pci_args}"
    ));
    let run = run_rig(test_name, &scenario);
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
    run
}

/// The 32-bit window (below 4 GiB) of each domain, in domain order.
fn windows_32bit(run: &RigRun) -> Vec<Window> {
    let mut w: Vec<Window> = windows(run, "PCI-MEM")
        .into_iter()
        .filter(|w| w.end < 1 << 32)
        .collect();
    w.sort_by_key(|w| w.domain);
    w
}

fn assert_disjoint(windows: &[Window], context: &str) {
    for (i, a) in windows.iter().enumerate() {
        for b in &windows[i + 1..] {
            assert!(
                a.end < b.start || b.end < a.start,
                "windows {a:x?} and {b:x?} overlap\n{context}"
            );
        }
    }
}

#[test]
fn two_segments_weighted_2_to_1_give_two_domains_and_a_2_to_1_split() {
    let run = boot_with_segments(
        "two_segments_weighted_2_to_1_give_two_domains_and_a_2_to_1_split",
        "--platform num_pci_segments=2 \
         --pci-segment pci_segment=0,mmio32_aperture_weight=2 \
         --pci-segment pci_segment=1,mmio32_aperture_weight=1",
    );
    let context = run.context();
    assert_eq!(
        run.guest("PCI-DOMAINS"),
        Some("0000,0001"),
        "PCI domains\n{context}"
    );
    let devices = run.guest("PCI-DEVICES").unwrap_or_default();
    assert!(
        devices.split(',').any(|d| d == "0001:00:00.0"),
        "no host bridge 0001:00:00.0 in the guest ({devices})\n{context}"
    );

    let w32 = windows_32bit(&run);
    assert_eq!(
        w32.iter().map(|w| w.domain).collect::<Vec<_>>(),
        vec![0, 1],
        "one 32-bit window per domain: {w32:x?}\n{context}"
    );
    // 2:1 within the 4 KiB split alignment: |size0 - 2 * size1| is a few pages at most.
    let (s0, s1) = (w32[0].size(), w32[1].size());
    assert!(
        s0.abs_diff(2 * s1) <= 4 * 4096,
        "32-bit windows {s0:#x} and {s1:#x} are not in ratio 2:1\n{context}"
    );
    // Together they are the whole 640 MiB aperture at 0xC000_0000, with nothing lost.
    assert_eq!(
        (w32[0].start, w32[1].end),
        (0xC000_0000, 0xE7FF_FFFF),
        "{context}"
    );
    assert_eq!(
        w32[0].end + 1,
        w32[1].start,
        "gap between the windows\n{context}"
    );

    let all_mem = windows(&run, "PCI-MEM");
    assert_disjoint(&all_mem, &context);
    let w64: Vec<&Window> = all_mem.iter().filter(|w| w.start >= 1 << 32).collect();
    assert_eq!(
        w64.len(),
        2,
        "one 64-bit window per domain: {w64:x?}\n{context}"
    );
    assert!(
        w64.iter().all(|w| w.size() >= 64 << 30),
        "64-bit windows too small for GPU-class BARs: {w64:x?}\n{context}"
    );
    let io = windows(&run, "PCI-IO");
    assert_eq!(io.len(), 2, "one I/O window per domain\n{context}");
    assert_disjoint(&io, &context);
}

#[test]
fn three_segments_give_three_domains() {
    let run = boot_with_segments(
        "three_segments_give_three_domains",
        "--platform num_pci_segments=3",
    );
    let context = run.context();
    assert_eq!(
        run.guest("PCI-DOMAINS"),
        Some("0000,0001,0002"),
        "PCI domains\n{context}"
    );
    let w32 = windows_32bit(&run);
    assert_eq!(
        w32.len(),
        3,
        "one 32-bit window per domain: {w32:x?}\n{context}"
    );
    assert_disjoint(&windows(&run, "PCI-MEM"), &context);
    // Equal weights: equal shares, the last one absorbing the rounding.
    assert_eq!(w32[0].size(), w32[1].size(), "{context}");
    assert!(w32[2].size() >= w32[1].size(), "{context}");
}

#[test]
fn default_platform_has_one_domain_with_the_whole_32bit_aperture() {
    let run = boot_with_segments(
        "default_platform_has_one_domain_with_the_whole_32bit_aperture",
        "",
    );
    let context = run.context();
    assert_eq!(
        run.guest("PCI-DOMAINS"),
        Some("0000"),
        "PCI domains\n{context}"
    );
    let w32 = windows_32bit(&run);
    assert_eq!(
        w32,
        vec![Window {
            domain: 0,
            start: 0xC000_0000,
            end: 0xE7FF_FFFF
        }],
        "{context}"
    );
}
