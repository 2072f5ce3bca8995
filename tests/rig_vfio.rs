//! PCI passthrough tests in the nested rig (see `docs/rig.md`, "Passthrough tests"). L1 QEMU
//! gives the rig host (L2) emulated PCI devices behind an emulated VT-d; the scenario hands them
//! to vfio-pci with `rig-vfio-bind` and runs viaduct with `--device path=…`; the guest (L3)
//! drives the device and reports what it saw; and the test checks on this machine that the
//! guest's writes reached the device's backing file (the NVMe disk image, the ivshmem memory).
//!
//! Every device sits at a fixed address in L2 (`common::SLOT_*`), so its BDF is known; the
//! guest's BDFs are viaduct's choice and are found by vendor:device.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;

use common::{
    device_path, l2_nvme_marker, marker_token, pci_capabilities, vfio_bind, viaduct_command,
    viaduct_stopped_by_sigterm, NvmeDisk, RigHost, RigRun, IVSHMEM_ID, NVME_ID, SLOT_BRIDGE,
    SLOT_EDU, SLOT_IVSHMEM, SLOT_NVME_A, SLOT_NVME_B, VIADUCT_TIMED_OUT,
};

/// The ivshmem BAR size: a 64-bit BAR larger than the 32-bit hole. 4 GiB is what the tests
/// use; 16 GiB also works in the rig host (L1 QEMU then grows its 64-bit window).
const IVSHMEM_BYTES: u64 = 4 << 30;

/// viaduct's arguments to boot the busybox guest (1 vCPU, 512 MiB) with `guest_args` on its
/// command line and `more` after them (`--device …`, `--platform …`).
fn guest_args(guest_args: &str, more: &str) -> String {
    format!(
        "--kernel /guest/bzImage --initramfs /guest/initramfs.cpio.gz \
         --cmdline \"console=ttyS0 quiet {guest_args}\" \
         --cpus boot=1 --memory size=512M --serial tty --console off {more}"
    )
}

/// The guest ran to its end and viaduct exited 0.
fn assert_clean_run(run: &RigRun, marker: &str) {
    let context = run.context();
    assert_eq!(
        run.guest_marker(),
        Some(marker),
        "guest marker (did the guest boot?)\n{context}"
    );
    let errors = run.values("GUEST-ERROR");
    assert!(
        errors.is_empty(),
        "the guest reported errors: {errors:?}\n{context}"
    );
    assert!(
        run.guest("DONE").is_some(),
        "the guest did not finish its steps\n{context}"
    );
    assert_eq!(
        run.viaduct_exit(),
        Some(0),
        "viaduct's exit status\n{context}"
    );
}

/// viaduct refused to start: non-zero (not the timeout), and no guest ever printed anything.
fn assert_refused(run: &RigRun) {
    let context = run.context();
    let status = run
        .viaduct_exit()
        .unwrap_or_else(|| panic!("no VIADUCT-EXIT line\n{context}"));
    assert_ne!(status, 0, "viaduct accepted it and exited 0\n{context}");
    assert_ne!(status, VIADUCT_TIMED_OUT, "viaduct hung\n{context}");
    let guest = run.guest_lines();
    assert!(guest.is_empty(), "a guest ran: {guest:?}\n{context}");
}

#[test]
fn nvme_passthrough_reads_marker_writes_data_and_uses_msix() {
    let test = "nvme_passthrough_reads_marker_writes_data_and_uses_msix";
    let mut host = RigHost::new(test);
    let disk = host.nvme("nva", SLOT_NVME_A, &marker_token());
    let (marker, write) = (marker_token(), marker_token());
    let scenario = l2_nvme_marker(&disk.bdf)
        + &vfio_bind(&[&disk.bdf], &[])
        + &viaduct_command(&guest_args(
            &format!("viaduct_marker={marker} viaduct_action=nvme-io viaduct_write={write}"),
            &format!("--device {}", device_path(&disk.bdf)),
        ));
    let run = host.run(&scenario);
    let context = run.context();
    // The rig's own part: the rig host's nvme driver read the marker before the device moved.
    assert_eq!(
        run.value("RIG-L2-NVME-MARKER"),
        Some(format!("{},{}", disk.bdf, disk.marker).as_str()),
        "the rig host could not read its own NVMe\n{context}"
    );
    assert_clean_run(&run, &marker);
    // DMA from the device to guest memory: the guest read what the test wrote.
    assert_eq!(
        run.guest("NVME-MARKER"),
        Some(disk.marker.as_str()),
        "the guest did not read the disk's marker\n{context}"
    );
    assert_eq!(run.guest("NVME-WROTE"), Some(write.as_str()), "{context}");
    // DMA from guest memory to the device: the guest's write is in the image on this machine.
    assert_eq!(
        disk.token_at(1),
        write,
        "sector 1 of {} does not hold the guest's write\n{context}",
        disk.image.display()
    );
    // Completions arrived as MSI-X interrupts on the nvme queues.
    let irqs: u64 = run
        .guest("NVME-IRQS")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no GUEST-NVME-IRQS\n{context}"));
    assert!(irqs > 0, "no nvme interrupts in the guest\n{context}");
    let lines = run.values("GUEST-IRQ");
    assert!(
        lines.iter().any(|l| l.contains("nvme0q0")) && lines.iter().any(|l| l.contains("nvme0q1")),
        "no admin and I/O queue interrupts: {lines:?}\n{context}"
    );
    assert!(
        lines.iter().all(|l| l.contains("MSI")),
        "nvme interrupts that are not MSI: {lines:?}\n{context}"
    );
    assert_eq!(run.guest("NVME-IRQ-MODE"), Some("msix"), "{context}");
    // The device was reset before the guest got it and after it was done with it: by vfio-pci
    // as viaduct opened and closed it (the NVMe has an FLR), and not a second time by viaduct.
    let stderr = run.viaduct_stderr().join("\n");
    for said in [
        "reset by vfio-pci as viaduct opened it",
        "vfio-pci resets it as viaduct closes it",
    ] {
        assert!(
            stderr.contains(&format!("{}: {said}", disk.bdf)),
            "no '{said}'\n{context}"
        );
    }
    assert!(
        !stderr.contains("(VFIO_DEVICE_RESET)"),
        "viaduct reset a vfio-pci function itself\n{context}"
    );
}

#[test]
fn two_devices_one_on_segment_1() {
    let test = "two_devices_one_on_segment_1";
    let mut host = RigHost::new(test);
    let a = host.nvme("nva", SLOT_NVME_A, &marker_token());
    let b = host.nvme("nvb", SLOT_NVME_B, &marker_token());
    let marker = marker_token();
    let scenario = vfio_bind(&[&a.bdf, &b.bdf], &[])
        + &viaduct_command(&guest_args(
            &format!("viaduct_marker={marker} viaduct_action=pci-report"),
            &format!(
                "--platform num_pci_segments=2 --device {} {},pci_segment=1",
                device_path(&a.bdf),
                device_path(&b.bdf)
            ),
        ));
    let run = host.run(&scenario);
    let context = run.context();
    assert_clean_run(&run, &marker);
    let nvmes = run.guest_devices_with_id(NVME_ID);
    let domains: Vec<u16> = nvmes.iter().map(|d| d.domain()).collect();
    assert_eq!(
        domains,
        vec![0, 1],
        "one NVMe in domain 0000 and one in 0001: {nvmes:?}\n{context}"
    );
    for dev in &nvmes {
        let windows = run.guest_pci_mem_windows(dev.domain());
        let bar0 = dev.bars.iter().find(|b| b.index == 0);
        assert!(
            bar0.is_some_and(|b| b.size() >= 0x2000),
            "{} has no BAR0 (register and doorbell space): {dev:?}\n{context}",
            dev.bdf
        );
        for bar in dev
            .bars
            .iter()
            .filter(|b| b.index < 6 && b.flags & 0x200 != 0)
        {
            assert!(
                windows.iter().any(|&(s, e)| s <= bar.start && bar.end <= e),
                "{} BAR{} {:#x}-{:#x} is outside domain {:04x}'s windows {windows:x?}\n{context}",
                dev.bdf,
                bar.index,
                bar.start,
                bar.end,
                dev.domain()
            );
        }
    }
}

#[test]
fn large_64bit_bar_is_mapped_not_emulated() {
    let test = "large_64bit_bar_is_mapped_not_emulated";
    let mut host = RigHost::new(test);
    let shm = host.ivshmem("shm", SLOT_IVSHMEM, IVSHMEM_BYTES);
    let (marker, pattern) = (marker_token(), marker_token());
    // Two runs in one rig boot: the second adds 256 reads spread over the BAR. If viaduct maps
    // the BAR into the guest, they cost no exits; if it emulated it, each would be an MMIO exit.
    const TOUCHES: u64 = 256;
    let device = format!("--device {}", device_path(&shm.bdf));
    let scenario = vfio_bind(&[&shm.bdf], &[])
        + &viaduct_command(&guest_args(
            &format!("viaduct_marker={marker} viaduct_action=ivshmem viaduct_pattern={pattern}"),
            &device,
        ))
        + &viaduct_command(&guest_args(
            &format!(
                "viaduct_marker={marker} viaduct_action=ivshmem viaduct_pattern={pattern} \
                 viaduct_ivshmem_touch={TOUCHES}"
            ),
            &device,
        ));
    let all = host.run(&scenario);
    let runs = all.viaduct_runs();
    assert_eq!(runs.len(), 2, "two viaduct runs\n{}", all.context());
    for run in &runs {
        let context = run.context();
        assert_clean_run(run, &marker);
        let bar2 = run
            .guest("IVSHMEM-BAR2")
            .unwrap_or_else(|| panic!("no GUEST-IVSHMEM-BAR2\n{context}"));
        let size = bar2
            .split_once(',')
            .and_then(|(_, s)| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok());
        assert_eq!(size, Some(shm.size), "BAR2 size ({bar2})\n{context}");
        // The PCI report agrees: one ivshmem, BAR2 a 64-bit prefetchable memory BAR.
        let devs = run.guest_devices_with_id(IVSHMEM_ID);
        let bar = devs
            .iter()
            .flat_map(|d| d.bars.iter())
            .find(|b| b.index == 2)
            .unwrap_or_else(|| panic!("no GUEST-BAR for ivshmem BAR2: {devs:?}\n{context}"));
        assert_eq!(bar.size(), shm.size, "{context}");
        // IORESOURCE_MEM, IORESOURCE_PREFETCH, IORESOURCE_MEM_64
        assert_eq!(
            bar.flags & 0x10_2200,
            0x10_2200,
            "BAR2 flags {:#x}\n{context}",
            bar.flags
        );
        // Near the start and in the last page of the BAR.
        let readback = run.values("GUEST-IVSHMEM-READBACK");
        let expected: Vec<String> = [0x1000, shm.size - 0x1000]
            .iter()
            .map(|o| format!("{o:#x}:{pattern}"))
            .collect();
        assert_eq!(readback, expected, "the guest's readback\n{context}");
    }
    let context = all.context();
    for offset in [0x1000, shm.size - 0x1000] {
        let bytes = shm.read(offset, pattern.len());
        assert_eq!(
            bytes,
            pattern.as_bytes(),
            "{} at {offset:#x} does not hold the guest's pattern\n{context}",
            shm.file.display()
        );
    }
    assert_eq!(
        runs[1].guest("IVSHMEM-TOUCHED"),
        Some(TOUCHES.to_string().as_str()),
        "{context}"
    );
    let mmio: Vec<u64> = runs
        .iter()
        .map(|r| {
            r.vcpu_exit_count("mmio")
                .unwrap_or_else(|| panic!("no 'viaduct vCPU exits: mmio=' line\n{}", r.context()))
        })
        .collect();
    assert!(
        mmio[1] < mmio[0] + TOUCHES / 2,
        "{TOUCHES} BAR reads added {} MMIO exits ({} -> {}): BAR2 is emulated, not mapped\n{context}",
        mmio[1].saturating_sub(mmio[0]),
        mmio[0],
        mmio[1]
    );
}

#[test]
fn gpudirect_clique_capability_is_visible() {
    let test = "gpudirect_clique_capability_is_visible";
    let mut host = RigHost::new(test);
    let disk = host.nvme("nva", SLOT_NVME_A, &marker_token());
    let marker = marker_token();
    let scenario = vfio_bind(&[&disk.bdf], &[])
        + &viaduct_command(&guest_args(
            &format!(
                "viaduct_marker={marker} viaduct_action=pci-report viaduct_dump_config={NVME_ID}"
            ),
            &format!(
                "--device {},x_nv_gpudirect_clique=3",
                device_path(&disk.bdf)
            ),
        ));
    let run = host.run(&scenario);
    let context = run.context();
    assert_clean_run(&run, &marker);
    let config = run
        .guest_config_space()
        .unwrap_or_else(|| panic!("no 256-byte GUEST-CONFIG dump\n{context}"));
    assert_eq!(
        &config[..4],
        &[0x36, 0x1b, 0x10, 0x00],
        "not the NVMe's config\n{context}"
    );
    let caps = pci_capabilities(&config)
        .unwrap_or_else(|e| panic!("broken capability list: {e}\n{context}"));
    // The vendor-specific capability NVIDIA drivers look for: length 8, "P2P", clique << 3.
    let clique = caps.iter().find(|c| {
        let o = c.offset as usize;
        c.id == 0x09 && o + 8 <= 256 && config[o + 2..o + 8] == [0x08, b'P', b'2', b'P', 3 << 3, 0]
    });
    assert!(
        clique.is_some(),
        "no '09 ?? 08 50 32 50 18 00' capability in the chain {caps:x?}\n{context}"
    );
    // The device's own capabilities are still there: MSI-X (0x11) and PCI Express (0x10).
    for id in [0x11, 0x10] {
        assert!(
            caps.iter().any(|c| c.id == id),
            "capability {id:#x} lost from the chain {caps:x?}\n{context}"
        );
    }
}

#[test]
fn non_viable_group_is_refused_naming_the_other_device() {
    let test = "non_viable_group_is_refused_naming_the_other_device";
    let mut host = RigHost::new(test);
    let [mine, other] = host.bridge_with_two_nvmes(SLOT_BRIDGE, ["br-a", "br-b"]);
    let scenario = vfio_bind(&[&mine.bdf], &[&other.bdf])
        + &viaduct_command(&guest_args(
            "viaduct_action=poweroff",
            &format!("--device {}", device_path(&mine.bdf)),
        ));
    let run = host.run(&scenario);
    let context = run.context();
    // The rig's part: both controllers (and the bridge) are in one group, the other on nvme.
    let group = run
        .value("RIG-VFIO-GROUP")
        .unwrap_or_else(|| panic!("no RIG-VFIO-GROUP line\n{context}"));
    let members = run
        .log
        .lines()
        .find(|l| l.contains("RIG-VFIO-GROUP="))
        .unwrap_or("");
    assert!(
        members.contains(&format!("{}:vfio-pci", mine.bdf))
            && members.contains(&format!("{}:nvme", other.bdf)),
        "group {group} is not the shared group: {members}\n{context}"
    );
    assert_refused(&run);
    let stderr = run.viaduct_stderr().join("\n");
    assert!(
        stderr.contains(&other.bdf) && stderr.contains("nvme"),
        "viaduct's error does not name {} and its driver nvme:\n{stderr}\n{context}",
        other.bdf
    );
}

#[test]
fn path_that_is_not_a_device_is_refused() {
    let test = "path_that_is_not_a_device_is_refused";
    let host = RigHost::new(test);
    let paths = ["/sys/bus/pci", "/tmp"];
    let scenario: String = paths
        .iter()
        .map(|p| {
            viaduct_command(&guest_args(
                "viaduct_action=poweroff",
                &format!("--device path={p}"),
            ))
        })
        .collect();
    let all = host.run(&scenario);
    let runs = all.viaduct_runs();
    assert_eq!(
        runs.len(),
        paths.len(),
        "one viaduct run per path\n{}",
        all.context()
    );
    for (run, path) in runs.iter().zip(paths) {
        assert_refused(run);
        let stderr = run.viaduct_stderr().join("\n");
        assert!(
            stderr.contains(path),
            "viaduct's error does not mention {path}:\n{stderr}\n{}",
            run.context()
        );
    }
}

#[test]
fn mmio_exits_do_not_grow_with_io() {
    let test = "mmio_exits_do_not_grow_with_io";
    let mut host = RigHost::new(test);
    let disk = host.nvme("nva", SLOT_NVME_A, &marker_token());
    let marker = marker_token();
    // Two runs in one rig boot, 1 MiB and 64 MiB of O_DIRECT reads. With the doorbells mapped
    // into the guest and MSI-X delivered by KVM, I/O costs no exits to viaduct.
    let sizes = [1, 64];
    let scenario = vfio_bind(&[&disk.bdf], &[])
        + &sizes
            .iter()
            .map(|mib| {
                viaduct_command(&guest_args(
                    &format!(
                        "viaduct_marker={marker} viaduct_action=nvme-io viaduct_write=run{mib} \
                         viaduct_nvme_mib={mib}"
                    ),
                    &format!("--device {}", device_path(&disk.bdf)),
                ))
            })
            .collect::<String>();
    let all = host.run(&scenario);
    let runs = all.viaduct_runs();
    assert_eq!(runs.len(), 2, "two viaduct runs\n{}", all.context());
    let mut mmio = Vec::new();
    for (run, mib) in runs.iter().zip(sizes) {
        let context = run.context();
        assert_clean_run(run, &marker);
        assert_eq!(
            run.guest("NVME-MARKER"),
            Some(disk.marker.as_str()),
            "{context}"
        );
        assert_eq!(
            run.guest("NVME-READ-MIB"),
            Some(mib.to_string().as_str()),
            "{context}"
        );
        eprintln!(
            "[{test}] {mib} MiB: {:?}, read in {}s",
            run.vcpu_exits(),
            run.guest("NVME-READ-SECONDS").unwrap_or("?")
        );
        mmio.push(
            run.vcpu_exit_count("mmio")
                .unwrap_or_else(|| panic!("no 'viaduct vCPU exits: mmio=' line\n{context}")),
        );
    }
    assert!(
        (mmio[1] as f64) < 1.5 * mmio[0] as f64 + 200.0,
        "MMIO exits grew with I/O: {} for 1 MiB, {} for 64 MiB\n{}",
        mmio[0],
        mmio[1],
        all.context()
    );
}

#[test]
fn device_is_released_after_guest_panic_and_sigterm() {
    let test = "device_is_released_after_guest_panic_and_sigterm";
    let mut host = RigHost::new(test);
    let disk = host.nvme("nva", SLOT_NVME_A, &marker_token());
    let marker = marker_token();
    let device = format!("--device {}", device_path(&disk.bdf));
    // Three VMs in a row with the same device: the guest panics; the guest is stopped by
    // SIGTERM to viaduct; then a guest must still open the device and read the disk.
    let scenario = vfio_bind(&[&disk.bdf], &[])
        + &viaduct_command(&guest_args(
            &format!("viaduct_marker={marker} viaduct_action=nvme-io,panic viaduct_write=p"),
            &device,
        ))
        + &viaduct_stopped_by_sigterm(
            &guest_args(
                &format!("viaduct_marker={marker} viaduct_action=nvme-io,hold viaduct_write=h"),
                &device,
            ),
            "GUEST-HOLDING",
        )
        + &viaduct_command(&guest_args(
            &format!("viaduct_marker={marker} viaduct_action=nvme-io viaduct_write=after"),
            &device,
        ));
    let all = host.run(&scenario);
    let runs = all.viaduct_runs();
    assert_eq!(runs.len(), 3, "three viaduct runs\n{}", all.context());

    let panicked = &runs[0];
    let context = panicked.context();
    assert_eq!(
        panicked.guest("NVME-MARKER"),
        Some(disk.marker.as_str()),
        "{context}"
    );
    let status = panicked.viaduct_exit().unwrap_or(0);
    assert!(
        status != 0 && status != VIADUCT_TIMED_OUT,
        "panic run exit {status}\n{context}"
    );

    let held = &runs[1];
    let context = held.context();
    assert_eq!(
        held.guest("NVME-MARKER"),
        Some(disk.marker.as_str()),
        "{context}"
    );
    assert_eq!(held.guest("HOLDING"), Some("1"), "{context}");
    assert_eq!(held.viaduct_exit(), Some(1), "SIGTERM run exit\n{context}");
    let stderr = held.viaduct_stderr().join("\n");
    assert!(
        stderr.contains("SIGTERM"),
        "viaduct does not say why it stopped\n{context}"
    );
    assert!(
        stderr.contains("releasing 1 passthrough device"),
        "viaduct did not release the device on SIGTERM\n{context}"
    );

    let after = &runs[2];
    assert_clean_run(after, &marker);
    assert_eq!(
        after.guest("NVME-MARKER"),
        Some(disk.marker.as_str()),
        "{}",
        after.context()
    );
    assert_eq!(disk.token_at(1), "after", "{}", all.context());
}

/// One guest run with one passed-through NVMe: what it printed and what to check it against.
struct NvmeRun {
    run: RigRun,
    disk: NvmeDisk,
    marker: String,
    write: String,
}

/// Binds a fresh NVMe to vfio-pci in the rig host and boots the busybox guest with it, with a
/// marker, a token to write (`viaduct_write=`) and `guest_args` on its command line.
fn one_nvme_guest(test: &str, guest_args_extra: &str) -> NvmeRun {
    let mut host = RigHost::new(test);
    let disk = host.nvme("nva", SLOT_NVME_A, &marker_token());
    let (marker, write) = (marker_token(), marker_token());
    let scenario = vfio_bind(&[&disk.bdf], &[])
        + &viaduct_command(&guest_args(
            &format!("{guest_args_extra} viaduct_marker={marker} viaduct_write={write}"),
            &format!("--device {}", device_path(&disk.bdf)),
        ));
    let run = host.run(&scenario);
    NvmeRun {
        run,
        disk,
        marker,
        write,
    }
}

#[test]
fn nvme_passthrough_works_on_intx_when_the_guest_disables_msi() {
    // With `pci=nomsi` the guest's nvme driver falls back to the legacy INTx line: routed by the
    // host bridge's _PRT to an IOAPIC pin, injected by a KVM irqfd and re-armed by the guest's
    // EOI through the resample eventfd (level-triggered, no trip through viaduct).
    let NvmeRun {
        run,
        disk,
        marker,
        write,
    } = one_nvme_guest(
        "nvme_passthrough_works_on_intx_when_the_guest_disables_msi",
        "pci=nomsi viaduct_action=nvme-io viaduct_nvme_mib=4",
    );
    let context = run.context();
    assert_clean_run(&run, &marker);
    assert_eq!(run.guest("NVME-IRQ-MODE"), Some("intx"), "{context}");
    assert_eq!(
        run.guest("NVME-MARKER"),
        Some(disk.marker.as_str()),
        "{context}"
    );
    assert_eq!(run.guest("NVME-READ-MIB"), Some("4"), "{context}");
    assert_eq!(disk.token_at(1), write, "{context}");
    let irqs: u64 = run
        .guest("NVME-IRQS")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no GUEST-NVME-IRQS\n{context}"));
    // A level line that is not re-armed after the guest's EOI delivers once and then never
    // again: the reads above would hang. Many interrupts and completed reads show the resample
    // path re-arms it (the admin queue set-up alone takes several; about 25 are seen here).
    assert!(irqs >= 8, "only {irqs} INTx interrupts\n{context}");
}

#[test]
fn guest_moving_a_bar_moves_its_mapping() {
    // The guest moves the NVMe's BAR0 up 1 MiB and 2 MiB, clears Memory Space, moves it back to
    // its first address while decoding is off and sets Memory Space again, reading the
    // controller's version register at each step: viaduct must move the BAR's memory slots and
    // traps with every move, take the BAR out of the guest while decoding is off and put it back
    // where the guest left it. The guest kernel then rescans and moves the BAR once more; the
    // driver must work through that mapping too.
    let NvmeRun {
        run,
        disk,
        marker,
        write,
    } = one_nvme_guest(
        "guest_moving_a_bar_moves_its_mapping",
        "viaduct_action=bar-move,nvme-io",
    );
    let context = run.context();
    assert_clean_run(&run, &marker);
    let vs = run.guest("BAR-VS-OLD-BEFORE").unwrap_or_default();
    assert!(
        vs.starts_with("0x") && vs != ALL_ONES,
        "no NVMe version register at the BAR before the moves: {vs}\n{context}"
    );
    let expect = |key: &str, want: &str, what: &str| {
        assert_eq!(
            run.guest(key),
            Some(want),
            "{what} (GUEST-{key})\n{context}"
        );
    };
    for n in 1..=2 {
        expect(
            &format!("BAR-VS-AT-{n}"),
            vs,
            "the register answers at the new address",
        );
        expect(
            &format!("BAR-VS-LEFT-{n}"),
            ALL_ONES,
            "nothing answers where it was",
        );
    }
    expect(
        "BAR-VS-DECODE-OFF",
        ALL_ONES,
        "Memory Space off reads all-ones",
    );
    expect("BAR-VS-OFF-MOVED", ALL_ONES, "moved while off, still off");
    expect(
        "BAR-VS-BACK",
        vs,
        "decode on again: the register answers at the first address",
    );
    expect("BAR-VS-LEFT-BACK", ALL_ONES, "and not at the last one");
    let hex = |key: &str| {
        run.guest(key)
            .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
            .unwrap_or_else(|| panic!("no GUEST-{key}\n{context}"))
    };
    let (first, one, two) = (
        hex("BAR-BEFORE"),
        hex("BAR-MOVED-TO-1"),
        hex("BAR-MOVED-TO-2"),
    );
    let stderr = run.viaduct_stderr();
    for followed in [
        format!("guest moved BAR0 from {first:#x} to {one:#x}"),
        format!("guest moved BAR0 from {one:#x} to {two:#x}"),
        format!("guest moved BAR0 from {two:#x} to {first:#x} (not decoding)"),
    ] {
        assert!(
            stderr.iter().any(|l| l.contains(&followed)),
            "viaduct did not log '{followed}'\n{context}"
        );
    }
    // After the rescan the driver works through the BAR wherever the kernel put it.
    assert_eq!(
        run.guest("NVME-MARKER"),
        Some(disk.marker.as_str()),
        "{context}"
    );
    assert_eq!(disk.token_at(1), write, "{context}");
    assert_eq!(run.guest("NVME-IRQ-MODE"), Some("msix"), "{context}");
}

/// What a read reaching no device returns.
const ALL_ONES: &str = "0xFFFFFFFF";

#[test]
fn a_device_that_cannot_attach_stops_viaduct_and_gives_every_device_back() {
    // A managed NVMe (bound by viaduct itself), a virtio disk, then QEMU's edu device, whose
    // 1 MiB 32-bit BAR cannot fit segment 0's 32-bit window (weights 1:100000 leave it 4 KiB).
    // viaduct must stop within seconds with an error naming the device and its BAR, close every
    // VFIO fd and give the NVMe back to its nvme driver, where the rig host reads its disk.
    let test = "a_device_that_cannot_attach_stops_viaduct_and_gives_every_device_back";
    let mut host = RigHost::new(test);
    let disk = host.nvme("nva", SLOT_NVME_A, &marker_token());
    let edu = host.edu(SLOT_EDU);
    let scenario = l2_nvme_marker(&disk.bdf)
        + &vfio_bind(&[&edu], &[])
        + "dd if=/dev/zero of=/tmp/blank.img bs=1M count=8 2>/dev/null\n"
        + &viaduct_command(&guest_args(
            "viaduct_action=poweroff",
            &format!(
                "--platform num_pci_segments=2 \
                 --pci-segment pci_segment=0,mmio32_aperture_weight=1 \
                 --pci-segment pci_segment=1,mmio32_aperture_weight=100000 \
                 --disk path=/tmp/blank.img --device {},managed=on {}",
                device_path(&disk.bdf),
                device_path(&edu)
            ),
        ))
        + &format!(
            "echo \"RIG-NVME-DRIVER-AFTER=$(basename $(readlink /sys/bus/pci/devices/{bdf}/driver))\"\n\
             n=0; while ! ls /sys/bus/pci/devices/{bdf}/nvme/nvme*/nvme*n1 >/dev/null 2>&1 && \
             [ $n -lt 20 ]; do sleep 1; n=$((n+1)); done\n\
             for ns in /sys/bus/pci/devices/{bdf}/nvme/nvme*/nvme*n1; do \
             echo \"RIG-L2-NVME-MARKER-AFTER=$(dd if=/dev/${{ns##*/}} bs=512 count=1 2>/dev/null | \
             tr '\\000' '\\n' | head -n1)\"; done\n",
            bdf = disk.bdf
        );
    let run = host.run(&scenario);
    let context = run.context();
    assert_eq!(
        run.value("RIG-L2-NVME-MARKER"),
        Some(format!("{},{}", disk.bdf, disk.marker).as_str()),
        "the rig host could not read its NVMe before the run\n{context}"
    );
    assert_refused(&run);
    let stderr = run.viaduct_stderr().join("\n");
    assert!(
        stderr.contains(&edu) && stderr.contains("BAR0") && stderr.contains("32-bit MMIO"),
        "the error does not name the device, its BAR and the window:\n{stderr}\n{context}"
    );
    assert!(
        stderr.contains(&format!("gave {} back to nvme", disk.bdf)),
        "viaduct did not give the NVMe back:\n{stderr}\n{context}"
    );
    let seconds = run
        .viaduct_seconds()
        .unwrap_or_else(|| panic!("no timing\n{context}"));
    assert!(
        seconds < 30.0,
        "viaduct took {seconds} s to give up\n{context}"
    );
    assert_eq!(
        run.value("RIG-NVME-DRIVER-AFTER"),
        Some("nvme"),
        "{context}"
    );
    assert_eq!(
        run.value("RIG-L2-NVME-MARKER-AFTER"),
        Some(disk.marker.as_str()),
        "the rig host cannot read its NVMe after viaduct gave it back\n{context}"
    );
}
