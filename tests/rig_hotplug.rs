//! The control API and PCI hotplug in the nested rig: viaduct boots a guest with
//! `--api-socket`, and the scenario drives it with `viaduct remote` while the guest waits for a
//! device. The rig's NVMe is hot-added (the guest finds it by itself through ACPI hotplug and its
//! nvme driver reads the disk with MSI-X), listed by `vm.info`, hot-removed (the guest ejects it)
//! and taken back by the rig host's own nvme driver; then, on segment 1 of 2 and with
//! `managed=on`, once more, this time ejected by the guest itself (its slot's power file), and
//! given back to nvme; that VM has 1 GiB of RAM, prefaulted before the hot-added device's DMA
//! map. `vm.shutdown` and `vmm.shutdown` end viaduct with exit 0.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;

use common::{
    device_path, marker_token, vfio_bind, RigHost, RigRun, NVME_ID, SLOT_NVME_A,
    VIADUCT_TIMEOUT_SECS,
};

const SOCKET: &str = "/tmp/viaduct-api.sock";

/// Scenario lines: viaduct in the background with `args` (guest console in /tmp/vm.out, its
/// stderr in /tmp/vm.err) under `rig-bounded`, as every rig test runs it (a hung guest is
/// reported, a triple fault named), the remote commands of `remote` once the guest waits for a
/// device, and viaduct's output and exit status at the end.
fn api_run(tag: &str, args: &str, remote: &str) -> String {
    format!(
        "wait_for() {{ n=0; while ! grep -q \"$2\" \"$1\" && [ $n -lt $3 ]; do sleep 1; n=$((n+1)); done; }}\n\
         rm -f /tmp/vm.out /tmp/vm.err\n\
         echo \"RIG-VIADUCT-START uptime=$(cut -d' ' -f1 /proc/uptime)\"\n\
         ( rig-bounded {VIADUCT_TIMEOUT_SECS} viaduct -v --api-socket {SOCKET} {args} >/tmp/vm.out 2>/tmp/vm.err; \
         echo $? >/tmp/vm.status ) &\n\
         wait_for /tmp/vm.out GUEST-HOTPLUG-WAITING 240\n\
         echo \"RIG-API-SOCKET-MODE-{tag}=$(stat -c %a {SOCKET})\"\n\
         {remote}\
         wait\n\
         cat /tmp/vm.out\n\
         sed 's/^/VIADUCT-STDERR| /' /tmp/vm.err\n\
         echo \"VIADUCT-EXIT=$(cat /tmp/vm.status) uptime=$(cut -d' ' -f1 /proc/uptime)\"\n\
         echo \"RIG-API-SOCKET-GONE-{tag}=$([ -e {SOCKET} ] && echo no || echo yes)\"\n"
    )
}

/// A `viaduct remote` call whose output and status go into one log line `RIG-REMOTE-<key>: …`.
fn remote(key: &str, command: &str) -> String {
    format!(
        "out=$(viaduct remote --api-socket {SOCKET} {command} 2>&1); \
         echo \"RIG-REMOTE-{key}: status=$? $out\" | tr -d '\\n'; echo\n"
    )
}

/// The text of the `RIG-REMOTE-<key>:` line.
fn remote_line<'a>(run: &'a RigRun, key: &str) -> &'a str {
    let prefix = format!("RIG-REMOTE-{key}: ");
    run.log
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {prefix}line\n{}", run.context()))
}

/// Gives the NVMe back to the rig host's nvme driver and prints its marker as the rig host
/// reads it: `RIG-L2-NVME-MARKER-<tag>=<token>`.
fn rebind_to_nvme(bdf: &str, tag: &str) -> String {
    format!(
        "echo nvme > /sys/bus/pci/devices/{bdf}/driver_override\n\
         [ -e /sys/bus/pci/devices/{bdf}/driver ] && echo {bdf} > /sys/bus/pci/devices/{bdf}/driver/unbind\n\
         echo {bdf} > /sys/bus/pci/drivers/nvme/bind\n\
         echo > /sys/bus/pci/devices/{bdf}/driver_override\n\
         {}",
        marker_after(bdf, tag)
    )
}

fn marker_after(bdf: &str, tag: &str) -> String {
    format!(
        "n=0; while ! ls /sys/bus/pci/devices/{bdf}/nvme/nvme*/nvme*n1 >/dev/null 2>&1 && \
         [ $n -lt 30 ]; do sleep 1; n=$((n+1)); done\n\
         echo \"RIG-NVME-DRIVER-{tag}=$(basename $(readlink /sys/bus/pci/devices/{bdf}/driver))\"\n\
         for ns in /sys/bus/pci/devices/{bdf}/nvme/nvme*/nvme*n1; do \
         echo \"RIG-L2-NVME-MARKER-{tag}=$(dd if=/dev/${{ns##*/}} bs=512 count=1 2>/dev/null | \
         tr '\\000' '\\n' | head -n1)\"; \
         echo \"RIG-L2-NVME-SECTOR1-{tag}=$(dd if=/dev/${{ns##*/}} bs=512 skip=1 count=1 2>/dev/null | \
         tr '\\000' '\\n' | head -n1)\"; done\n"
    )
}

fn guest_args(marker: &str, write: &str, memory: &str, more: &str) -> String {
    format!(
        "--kernel /guest/bzImage --initramfs /guest/initramfs.cpio.gz \
         --cmdline \"console=ttyS0 quiet viaduct_marker={marker} viaduct_action=hotplug,hold \
         viaduct_write={write}\" --cpus boot=1 --memory size={memory} --serial tty --console off \
         {more}"
    )
}

#[test]
fn a_device_is_hot_added_used_hot_removed_and_given_back_on_both_segments() {
    let test = "a_device_is_hot_added_used_hot_removed_and_given_back_on_both_segments";
    let mut host = RigHost::new(test);
    // Two CPUs: the second run's first hot-added device prefaults its 1 GiB of RAM on both.
    host.qemu_args(["-smp", "2"]);
    let disk = host.nvme("nva", SLOT_NVME_A, &marker_token());
    let bdf = disk.bdf.clone();
    let (marker, write1, write2) = (marker_token(), marker_token(), marker_token());
    let dev = device_path(&bdf);
    let first = remote("PING", "ping")
        + &remote("BAD-PATH", "add-device path=/sys/bus/pci")
        + &remote("ADD", &format!("add-device {dev},id=nvme0"))
        + &remote("ADD-AGAIN", &format!("add-device {dev},id=nvme1"))
        + &remote("INFO", "info")
        + "wait_for /tmp/vm.out GUEST-HOTPLUG-IO-DONE 240\n"
        + &remote("REMOVE-UNKNOWN", "remove-device nope")
        + &remote("REMOVE", "remove-device nvme0")
        + "wait_for /tmp/vm.out GUEST-HOTPLUG-GONE 60\n"
        + &remote("SHUTDOWN", "shutdown");
    let second = remote(
        "ADD-SEG1",
        &format!("add-device {dev},id=nvme9,pci_segment=1,managed=on"),
    ) + "wait_for /tmp/vm.out GUEST-HOTPLUG-GONE 240\n"
        // The guest ejected it on its own; viaduct detaches it off the vCPU thread.
        + &format!(
            "n=0; while viaduct remote --api-socket {SOCKET} info | grep -q nvme9 && \
             [ $n -lt 30 ]; do sleep 1; n=$((n+1)); done\n"
        )
        + &remote("INFO-AFTER-EJECT", "info")
        + &remote("REMOVE-EJECTED", "remove-device nvme9")
        + &remote("SHUTDOWN-2", "shutdown-vmm");
    let scenario = vfio_bind(&[&bdf], &[])
        + &api_run("1", &guest_args(&marker, &write1, "512M", ""), &first)
        + &rebind_to_nvme(&bdf, "1")
        + &api_run(
            "2",
            &guest_args(
                &format!("{marker} viaduct_hotplug_eject=self"),
                &write2,
                "1G",
                "--platform num_pci_segments=2",
            ),
            &second,
        )
        + &marker_after(&bdf, "2");
    let all = host.run(&scenario);
    let runs = all.viaduct_runs();
    assert_eq!(runs.len(), 2, "two viaduct runs\n{}", all.context());

    // Run 1: segment 0.
    let run = &runs[0];
    let context = run.context();
    assert_eq!(run.value("RIG-API-SOCKET-MODE-1"), Some("600"), "{context}");
    assert!(
        remote_line(run, "PING").starts_with("status=0 {"),
        "{context}"
    );
    let bad = remote_line(run, "BAD-PATH");
    assert!(
        bad.starts_with("status=1 ") && bad.contains("400"),
        "{bad}\n{context}"
    );
    let added = remote_line(run, "ADD");
    assert!(
        added.starts_with("status=0 ") && added.contains("\"id\":\"nvme0\""),
        "{added}\n{context}"
    );
    let again = remote_line(run, "ADD-AGAIN");
    assert!(
        again.starts_with("status=1 ")
            && again.contains("409")
            && again.contains("already attached"),
        "{again}\n{context}"
    );
    let info = remote_line(run, "INFO");
    assert!(
        info.contains("\"id\":\"nvme0\"") && info.contains("\"bars\""),
        "{info}\n{context}"
    );
    let appeared = run
        .guest("HOTPLUG-APPEARED")
        .unwrap_or_else(|| panic!("the guest never saw the device\n{context}"));
    assert!(
        added.contains(&format!("\"bdf\":\"{appeared}\"")),
        "add-device's bdf and the guest's differ: {added} / {appeared}\n{context}"
    );
    assert_eq!(
        run.guest("NVME-MARKER"),
        Some(disk.marker.as_str()),
        "{context}"
    );
    assert_eq!(run.guest("NVME-WROTE"), Some(write1.as_str()), "{context}");
    assert_eq!(run.guest("NVME-IRQ-MODE"), Some("msix"), "{context}");
    assert!(
        remote_line(run, "REMOVE-UNKNOWN").contains("404"),
        "{context}"
    );
    assert!(
        remote_line(run, "REMOVE").starts_with("status=0"),
        "{context}"
    );
    assert_eq!(run.guest("HOTPLUG-GONE"), Some(appeared), "{context}");
    let left = run.guest("HOTPLUG-LEFT").unwrap_or_default();
    assert!(
        !left.contains(appeared),
        "the guest still lists it: {left}\n{context}"
    );
    assert!(
        remote_line(run, "SHUTDOWN").starts_with("status=0"),
        "{context}"
    );
    assert_eq!(
        run.viaduct_exit(),
        Some(0),
        "vm.shutdown ends viaduct with 0\n{context}"
    );
    assert_eq!(run.value("RIG-API-SOCKET-GONE-1"), Some("yes"), "{context}");
    // viaduct let go of the device: the rig host's nvme driver takes it and reads the disk.
    assert_eq!(all.value("RIG-NVME-DRIVER-1"), Some("nvme"), "{context}");
    assert_eq!(
        all.value("RIG-L2-NVME-MARKER-1"),
        Some(disk.marker.as_str()),
        "{context}"
    );
    // What the guest wrote is on the disk as the rig host reads it (the image file itself holds
    // the second run's write by the time the test reads it).
    assert_eq!(
        all.value("RIG-L2-NVME-SECTOR1-1"),
        Some(write1.as_str()),
        "{context}"
    );

    // Run 2: segment 1 of 2, managed=on (the device starts on nvme and goes back to it).
    let run = &runs[1];
    let context = run.context();
    let added = remote_line(run, "ADD-SEG1");
    assert!(
        added.starts_with("status=0 ") && added.contains("\"bdf\":\"0001:"),
        "{added}\n{context}"
    );
    let appeared = run.guest("HOTPLUG-APPEARED").unwrap_or_default();
    assert!(appeared.starts_with("0001:"), "{appeared}\n{context}");
    let on_seg1 = run.guest_devices_with_id(NVME_ID);
    assert!(
        on_seg1.is_empty(),
        "no NVMe at boot: {on_seg1:?}\n{context}"
    );
    assert_eq!(run.guest("NVME-WROTE"), Some(write2.as_str()), "{context}");
    assert!(run.guest("HOTPLUG-SELF-EJECT").is_some(), "{context}");
    assert_eq!(run.guest("HOTPLUG-GONE"), Some(appeared), "{context}");
    let info = remote_line(run, "INFO-AFTER-EJECT");
    assert!(
        // Only viaduct's own rng (every VM has one, as in cloud-hypervisor) is left.
        info.starts_with("status=0 ")
            && info.contains("\"id\":\"__rng\"")
            && !info.contains("\"id\":\"nvme9\""),
        "the guest's eject did not detach the device: {info}\n{context}"
    );
    assert!(
        remote_line(run, "REMOVE-EJECTED").contains("404"),
        "{context}"
    );
    assert_eq!(run.viaduct_exit(), Some(0), "{context}");
    // 1 GiB of private RAM and a first device hot-added: prefaulted on both CPUs of the rig
    // host, in the running guest, just before the DMA map (and from the API thread, under
    // its seccomp filter).
    let lines = run.viaduct_stderr();
    let at = |what: &str| {
        lines
            .iter()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line with '{what}'\n{context}"))
    };
    let prefaulted = at("guest RAM prefaulted for DMA mapping: 1024 MiB");
    assert!(
        lines[prefaulted].contains("with 2 thread(s)")
            && at("entering the kernel") < prefaulted
            && prefaulted < at("DMA-mapped"),
        "{}\n{context}",
        lines[prefaulted]
    );
    let stderr = lines.join("\n");
    assert!(
        stderr.contains(&format!("gave {bdf} back to nvme")),
        "managed=on did not give the device back\n{context}"
    );
    assert_eq!(all.value("RIG-NVME-DRIVER-2"), Some("nvme"), "{context}");
    assert_eq!(
        all.value("RIG-L2-NVME-MARKER-2"),
        Some(disk.marker.as_str()),
        "{context}"
    );
    assert_eq!(disk.token_at(1), write2, "{context}");
}
