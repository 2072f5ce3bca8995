//! Peer-to-peer DMA between passed-through devices, in the nested rig: QEMU's `edu` device
//! copies bytes from the ivshmem device's BAR into its own buffer and back out to another offset
//! of that BAR. Both transfers are device-to-device DMA through the host's (emulated) IOMMU,
//! which only arrive if viaduct DMA-mapped the ivshmem BAR at its guest address in the VM's
//! VFIO container. The test checks the bytes in the ivshmem device's backing file on this
//! machine. The rig's emulated VT-d has 39 address bits, so this also proves the 64-bit windows
//! were laid out inside its reach.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;

use std::os::unix::fs::FileExt;

use common::{
    device_path, marker_token, vfio_bind, viaduct_command, RigHost, RigRun, SLOT_EDU, SLOT_IVSHMEM,
};

/// The ivshmem BAR: 256 MiB, a 64-bit prefetchable BAR.
const SHM_BYTES: u64 = 256 << 20;
/// Where the test puts the bytes edu copies, in the ivshmem BAR.
const SOURCE: u64 = 0x2000;
/// Bytes copied.
const LEN: usize = 32;
/// The last address a 39-bit IOMMU translates.
const IOMMU_39_BIT_LIMIT: u64 = (1 << 39) - 1;

fn guest_args(marker: &str, action: &str, more: &str) -> String {
    format!(
        "--kernel /guest/bzImage --initramfs /guest/initramfs.cpio.gz \
         --cmdline \"console=ttyS0 quiet viaduct_marker={marker} viaduct_action=p2p {action}\" \
         --cpus boot=1 --memory size=512M --serial tty --console off {more}"
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_value(run: &RigRun, key: &str) -> u64 {
    let v = run
        .guest(key)
        .unwrap_or_else(|| panic!("no GUEST-{key}\n{}", run.context()));
    let v = v.split(',').next().unwrap_or(v);
    u64::from_str_radix(v.trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("GUEST-{key}={v} is not hex\n{}", run.context()))
}

#[test]
fn edu_dma_reaches_the_other_devices_bar_across_segments_and_after_a_move() {
    let test = "edu_dma_reaches_the_other_devices_bar_across_segments_and_after_a_move";
    let mut host = RigHost::new(test);
    let edu = host.edu(SLOT_EDU);
    let shm = host.ivshmem("shm", SLOT_IVSHMEM, SHM_BYTES);
    let pattern: Vec<u8> = marker_token()
        .into_bytes()
        .into_iter()
        .cycle()
        .take(LEN)
        .collect();
    std::fs::File::options()
        .write(true)
        .open(&shm.file)
        .and_then(|f| f.write_all_at(&pattern, SOURCE))
        .expect("write the pattern into the ivshmem memory");
    let marker = marker_token();
    let (edu_dev, shm_dev) = (device_path(&edu), device_path(&shm.bdf));
    // Three VMs in one rig boot, each copying to its own offset of the BAR:
    // 1. both devices on segment 0;
    // 2. ivshmem on segment 1, and the guest moves its BAR before the copy;
    // 3. the same as 1 with --platform vfio_p2p_dma=off: nothing may arrive.
    let runs = [
        (0x3000u64, "", format!("--device {edu_dev} {shm_dev}")),
        (
            0x4000,
            "viaduct_p2p_move=1",
            format!("--platform num_pci_segments=2 --device {edu_dev} {shm_dev},pci_segment=1"),
        ),
        (
            0x5000,
            "",
            format!("--platform vfio_p2p_dma=off --device {edu_dev} {shm_dev}"),
        ),
    ];
    let scenario = vfio_bind(&[&edu, &shm.bdf], &[])
        + &runs
            .iter()
            .map(|(dst, extra, devices)| {
                viaduct_command(&guest_args(
                    &marker,
                    &format!("viaduct_p2p_dst={dst:#x} viaduct_p2p_len={LEN} {extra}"),
                    devices,
                ))
            })
            .collect::<String>();
    let all = host.run(&scenario);
    let results = all.viaduct_runs();
    assert_eq!(results.len(), 3, "three viaduct runs\n{}", all.context());
    for (run, (dst, _, _)) in results.iter().zip(&runs) {
        let context = run.context();
        assert_eq!(run.guest_marker(), Some(marker.as_str()), "{context}");
        assert_eq!(run.viaduct_exit(), Some(0), "{context}");
        assert!(run.values("GUEST-ERROR").is_empty(), "{context}");
        assert_eq!(
            run.guest("P2P-DMA"),
            Some("done"),
            "edu's DMA engine\n{context}"
        );
        // Both devices were opened side by side, beside the VM's build, and still attached
        // in the order given (edu's copy to ivshmem's BAR only works if each is where the
        // guest's script looks for it).
        let stderr = run.viaduct_stderr().join("\n");
        assert!(
            stderr.contains("2 passthrough device(s) opened in"),
            "the two devices were not opened together\n{context}"
        );
        let bar2 = hex_value(run, "P2P-SHM-BAR2");
        assert!(
            bar2 + SHM_BYTES - 1 <= IOMMU_39_BIT_LIMIT,
            "the ivshmem BAR at {bar2:#x} is beyond the 39-bit IOMMU\n{context}"
        );
        let _ = dst;
    }

    // 1 and 2: the bytes arrived, in the file and as the guest's CPU reads them.
    for (run, (dst, _, _)) in results.iter().zip(&runs).take(2) {
        let context = run.context();
        assert_eq!(
            shm.read(*dst, LEN),
            pattern,
            "the copy did not arrive at {dst:#x} of {}\n{context}",
            shm.file.display()
        );
        assert_eq!(
            run.guest("P2P-READBACK"),
            Some(hex(&pattern).as_str()),
            "{context}"
        );
        let stderr = run.viaduct_stderr().join("\n");
        for dev in [&edu, &shm.bdf] {
            assert!(
                stderr.contains(&format!("{dev}: its BARs are DMA-mapped for peer-to-peer")),
                "{dev} was not DMA-mapped for peer-to-peer\n{context}"
            );
        }
        assert!(
            stderr.contains("every 64-bit window is inside the host IOMMU's reach"),
            "{context}"
        );
    }
    // 2: ivshmem sat on segment 1 and the guest moved its BAR2; viaduct followed.
    let moved = &results[1];
    let context = moved.context();
    let (from, to) = (
        hex_value(moved, "P2P-SHM-BAR2"),
        hex_value(moved, "P2P-SHM-MOVED-TO"),
    );
    assert_eq!(to, from + SHM_BYTES, "{context}");
    let devices = moved.guest_devices_with_id(common::IVSHMEM_ID);
    assert_eq!(
        devices.iter().map(|d| d.domain()).collect::<Vec<_>>(),
        [1],
        "ivshmem in domain 0001\n{context}"
    );
    assert!(
        moved
            .viaduct_stderr()
            .iter()
            .any(|l| l.contains(&format!("guest moved BAR2 from {from:#x} to {to:#x}"))),
        "{context}"
    );
    // 3: with vfio_p2p_dma=off the device-to-device DMA faults in the IOMMU: nothing arrives.
    let off = &results[2];
    assert_eq!(
        shm.read(runs[2].0, LEN),
        vec![0; LEN],
        "bytes arrived without peer-to-peer mappings\n{}",
        off.context()
    );
    assert!(
        !off.viaduct_stderr()
            .iter()
            .any(|l| l.contains("DMA-mapped for peer-to-peer")),
        "{}",
        off.context()
    );
}
