//! Guest memory backings in the nested rig: hugepage-backed RAM with a passed-through NVMe (the
//! rig host's hugepage pool gives exactly the guest's pages while it runs and gets them back),
//! a refused start when the pool is too small, prefaulted RAM that is resident before the
//! guest's first instruction (asked for, or by default before a passed-through device's DMA
//! mapping), and a VM stopped while its RAM is being DMA-mapped that stops the mapping.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;

use common::{
    device_path, marker_token, vfio_bind, viaduct_command, viaduct_stopped_by_sigterm, RigHost,
    RigRun, SLOT_NVME_A,
};

fn guest_args(marker: &str, action: &str, more: &str) -> String {
    format!(
        "--kernel /guest/bzImage --initramfs /guest/initramfs.cpio.gz \
         --cmdline \"console=ttyS0 quiet viaduct_marker={marker} viaduct_action={action}\" \
         --cpus boot=1 --serial tty --console off {more}"
    )
}

/// `HugePages_Free` of the rig host's /proc/meminfo, as a shell expression.
const HUGEPAGES_FREE: &str = "$(awk '/^HugePages_Free/ { print $2 }' /proc/meminfo)";

fn number(run: &RigRun, key: &str) -> u64 {
    run.value(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}\n{}", run.context()))
}

#[test]
fn hugepage_ram_takes_exactly_the_guests_pages_and_a_short_pool_is_refused() {
    let test = "hugepage_ram_takes_exactly_the_guests_pages_and_a_short_pool_is_refused";
    let mut host = RigHost::new(test);
    host.memory("3072M");
    let disk = host.nvme("nva", SLOT_NVME_A, &marker_token());
    let (marker, write) = (marker_token(), marker_token());
    // 600 pages of 2 MiB; a sampler records the lowest HugePages_Free while viaduct runs.
    let scenario = vfio_bind(&[&disk.bdf], &[])
        + "echo 600 > /proc/sys/vm/nr_hugepages\n"
        + &format!("echo \"RIG-HUGEPAGES-FREE-BEFORE={HUGEPAGES_FREE}\"\n")
        + &format!(
            "( min={HUGEPAGES_FREE}; while [ ! -e /tmp/stop ]; do f={HUGEPAGES_FREE}; \
             [ \"$f\" -lt \"$min\" ] && min=$f; echo $min >/tmp/min; sleep 0.2; done ) &\n"
        )
        + &viaduct_command(&guest_args(
            &marker,
            &format!("nvme-io viaduct_write={write}"),
            &format!(
                "--memory size=1G,hugepages=on,hugepage_size=2M --device {}",
                device_path(&disk.bdf)
            ),
        ))
        + "touch /tmp/stop; wait\n"
        + "echo \"RIG-HUGEPAGES-FREE-MIN=$(cat /tmp/min)\"\n"
        + &format!("echo \"RIG-HUGEPAGES-FREE-AFTER={HUGEPAGES_FREE}\"\n")
        // Now a pool of 100 pages: a 1 GiB guest needs 512.
        + "echo 100 > /proc/sys/vm/nr_hugepages\n"
        + &viaduct_command(&guest_args(
            &marker,
            "poweroff",
            "--memory size=1G,hugepages=on",
        ));
    let all = host.run(&scenario);
    let runs = all.viaduct_runs();
    assert_eq!(runs.len(), 2, "two viaduct runs\n{}", all.context());

    let run = &runs[0];
    let context = run.context();
    assert_eq!(run.guest_marker(), Some(marker.as_str()), "{context}");
    assert_eq!(run.viaduct_exit(), Some(0), "{context}");
    assert_eq!(
        run.guest("NVME-MARKER"),
        Some(disk.marker.as_str()),
        "DMA into hugepage RAM\n{context}"
    );
    assert_eq!(
        disk.token_at(1),
        write,
        "DMA out of hugepage RAM\n{context}"
    );
    let before = number(&all, "RIG-HUGEPAGES-FREE-BEFORE");
    assert_eq!(before, 600, "the rig host's pool\n{context}");
    assert_eq!(
        number(&all, "RIG-HUGEPAGES-FREE-MIN"),
        before - 512,
        "a 1 GiB guest takes exactly 512 pages of 2 MiB\n{context}"
    );
    assert_eq!(
        number(&all, "RIG-HUGEPAGES-FREE-AFTER"),
        before,
        "the pages came back after the guest\n{context}"
    );

    let short = &runs[1];
    let context = short.context();
    let status = short.viaduct_exit().unwrap_or(0);
    assert!(
        status != 0 && status != common::VIADUCT_TIMED_OUT,
        "{context}"
    );
    assert!(short.guest_lines().is_empty(), "a guest ran\n{context}");
    let stderr = short.viaduct_stderr();
    let errors: Vec<&&str> = stderr.iter().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one clear line: {errors:?}\n{context}");
    assert!(
        errors[0].contains("needs 512 free hugepages but the host has only 100")
            && errors[0].contains("nr_hugepages"),
        "{}\n{context}",
        errors[0]
    );
    assert!(!stderr.iter().any(|l| l.contains("panicked")), "{context}");
}

/// `VmRSS <n> MiB` in `line`.
fn vmrss_mib(line: &str) -> Option<u64> {
    line.split("VmRSS ").nth(1)?.split(' ').next()?.parse().ok()
}

/// The index of the first viaduct stderr line containing `what`.
fn line_with(run: &RigRun, what: &str) -> usize {
    run.viaduct_stderr()
        .iter()
        .position(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no line with '{what}'\n{}", run.context()))
}

/// A rig host with two CPUs: `prefault=on` RAM is resident before the guest's first
/// instruction; with a passed-through NVMe and 1 GiB of private RAM, RAM is DMA-mapped beside
/// the booting guest, not prefaulted (its vCPU leaves one CPU), and the guest's driver then
/// reads and writes the disk through it; `prefault=off` never prefaults. (The default prefault
/// with CPUs to spare is proven by the hot-plug test in rig_hotplug.)
#[test]
fn prefaulted_ram_is_resident_before_the_guest_starts() {
    let test = "prefaulted_ram_is_resident_before_the_guest_starts";
    let mut host = RigHost::new(test);
    host.qemu_args(["-smp", "2"]);
    let disk = host.nvme("nva", SLOT_NVME_A, &marker_token());
    let (marker, write) = (marker_token(), marker_token());
    let device = format!("--device {}", device_path(&disk.bdf));
    let scenario = vfio_bind(&[&disk.bdf], &[])
        + &viaduct_command(&guest_args(
            &marker,
            "poweroff",
            "--memory size=512M,prefault=on",
        ))
        + &viaduct_command(&guest_args(
            &marker,
            &format!("nvme-io viaduct_write={write}"),
            &format!("--memory size=1G {device}"),
        ))
        + &viaduct_command(&guest_args(
            &marker,
            "poweroff",
            &format!("--memory size=1G,prefault=off {device}"),
        ));
    let all = host.run(&scenario);
    let runs = all.viaduct_runs();
    assert_eq!(runs.len(), 3, "three viaduct runs\n{}", all.context());
    for run in &runs {
        assert_eq!(
            run.guest_marker(),
            Some(marker.as_str()),
            "{}",
            run.context()
        );
        assert_eq!(run.viaduct_exit(), Some(0), "{}", run.context());
    }

    // prefault=on: resident before the kernel is entered.
    let run = &runs[0];
    let context = run.context();
    let stderr = run.viaduct_stderr();
    let prefaulted = line_with(run, "guest RAM prefaulted: 512 MiB");
    assert!(
        prefaulted < line_with(run, "entering the kernel"),
        "prefaulted after the guest started\n{context}"
    );
    let rss = vmrss_mib(stderr[prefaulted])
        .unwrap_or_else(|| panic!("no VmRSS in '{}'\n{context}", stderr[prefaulted]));
    assert!(
        rss >= 512,
        "VmRSS {rss} MiB, the guest has 512 MiB\n{context}"
    );

    // Not given, with the device: guest RAM is DMA-mapped on a thread of its own beside the
    // booting guest (the pin of 1 GiB takes seconds here, the kernel is entered milliseconds
    // after it starts), without a prefault (two CPUs, one for the guest's vCPU: the pin alone
    // is as parallel), then used by the guest's driver, which got bus mastering only once
    // guest RAM was mapped.
    let run = &runs[1];
    let context = run.context();
    let stderr = run.viaduct_stderr();
    let mapping = line_with(
        run,
        "DMA-mapping 1024 MiB of guest RAM on a thread of its own",
    );
    let entered = line_with(run, "entering the kernel");
    let mapped = line_with(run, "beside the booting guest");
    assert!(
        stderr[mapped].contains("DMA-mapped 1.00 GiB of guest RAM in"),
        "{}\n{context}",
        stderr[mapped]
    );
    assert!(
        mapping < entered && entered < mapped,
        "not mapped beside the booting guest\n{context}"
    );
    assert!(
        !stderr.iter().any(|l| l.contains("prefaulted")),
        "prefaulted with one CPU to spare beside the guest\n{context}"
    );
    assert_eq!(
        run.guest("NVME-MARKER"),
        Some(disk.marker.as_str()),
        "DMA into RAM mapped beside the guest\n{context}"
    );
    assert_eq!(
        disk.token_at(1),
        write,
        "DMA out of RAM mapped beside the guest\n{context}"
    );

    // prefault=off: the pin faults the pages in itself.
    let run = &runs[2];
    let context = run.context();
    assert!(
        !run.viaduct_stderr()
            .iter()
            .any(|l| l.contains("prefaulted")),
        "prefault=off, yet prefaulted\n{context}"
    );
    line_with(run, "DMA-mapped");
}

/// A VM stopped (SIGTERM) while guest RAM is still being DMA-mapped beside its boot, with the
/// guest's NVMe driver held at the gate that keeps bus mastering off until the mapping is done:
/// the vCPU is let go at once (the device stays without bus mastering), the mapping ends at its
/// next 1 GiB piece instead of pinning the rest of the 3 GiB, viaduct stops cleanly, and the
/// next VM gets the device and reads the disk through it. A VM stopped during its
/// `prefault=on` (before its guest and its devices exist) stops the prefault at its next chunk
/// and says so, instead of dying of the signal with no message.
#[test]
fn a_vm_stopped_while_its_ram_is_dma_mapped_stops_the_mapping_and_gives_the_device_back() {
    let test =
        "a_vm_stopped_while_its_ram_is_dma_mapped_stops_the_mapping_and_gives_the_device_back";
    let mut host = RigHost::new(test);
    host.qemu_args(["-smp", "2"]).memory("4608M");
    let disk = host.nvme("nva", SLOT_NVME_A, &marker_token());
    let marker = marker_token();
    let device = format!("--device {}", device_path(&disk.bdf));
    let scenario = vfio_bind(&[&disk.bdf], &[])
        + &viaduct_stopped_by_sigterm(
            &guest_args(&marker, "nvme-io", &format!("--memory size=3G {device}")),
            "holding it until the mapping is done",
        )
        + &viaduct_stopped_by_sigterm(
            &guest_args(
                &marker,
                "nvme-io",
                &format!("--memory size=3G,prefault=on {device}"),
            ),
            "prefaulting guest RAM",
        )
        + &viaduct_command(&guest_args(
            &marker,
            "nvme-io",
            &format!("--memory size=512M {device}"),
        ));
    let all = host.run(&scenario);
    let runs = all.viaduct_runs();
    assert_eq!(runs.len(), 3, "three viaduct runs\n{}", all.context());

    let run = &runs[0];
    let context = run.context();
    let stderr = run.viaduct_stderr();
    let held = line_with(run, "holding it until the mapping is done");
    let let_go = line_with(run, "no longer held, after");
    let refused = line_with(run, "bus mastering stays off: the VM is stopping");
    let given_up = line_with(run, "guest RAM's DMA mapping given up");
    assert!(
        held < let_go && let_go < refused,
        "let go before it was held\n{context}"
    );
    assert!(
        stderr[given_up].contains("stopped DMA-mapping guest RAM after")
            && stderr[given_up].contains("of 3 GiB"),
        "{}\n{context}",
        stderr[given_up]
    );
    for never in [
        "DMA-mapped 3.00 GiB",
        "did not stop within",
        "bus mastering on, after",
    ] {
        assert!(
            !stderr.iter().any(|l| l.contains(never)),
            "'{never}' in a VM stopped during its DMA mapping\n{context}"
        );
    }
    assert_eq!(run.viaduct_exit(), Some(1), "{context}");
    line_with(run, "stopped by signal SIGTERM");
    line_with(run, "releasing 1 passthrough device");

    // SIGTERM during prefault=on: the prefault ends early, no guest starts.
    let run = &runs[1];
    let context = run.context();
    let stderr = run.viaduct_stderr();
    let started = line_with(run, "prefaulting guest RAM: 3072 MiB");
    let stopped = line_with(run, "guest RAM prefault stopped by SIGTERM after");
    assert!(
        started < stopped && stderr[stopped].contains("of 3072 MiB"),
        "{}\n{context}",
        stderr[stopped]
    );
    for never in ["guest RAM prefaulted:", "entering the kernel"] {
        assert!(
            !stderr.iter().any(|l| l.contains(never)),
            "'{never}' in a VM stopped during its prefault\n{context}"
        );
    }
    assert_eq!(run.viaduct_exit(), Some(1), "{context}");
    line_with(run, "stopped by signal SIGTERM");

    let after = &runs[2];
    let context = after.context();
    assert_eq!(after.viaduct_exit(), Some(0), "{context}");
    assert_eq!(
        after.guest("NVME-MARKER"),
        Some(disk.marker.as_str()),
        "the next VM cannot read the disk\n{context}"
    );
}
