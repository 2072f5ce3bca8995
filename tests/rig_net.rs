//! virtio-net in the nested rig (see `docs/network.md`, "Rig test"). viaduct creates taps in the
//! rig host (L2) with `--net tap=…,ip=…,mask=…`, the busybox guest (L3) configures its side
//! (`net-io` step) and the two talk over link-local addresses, the rig having no other network:
//! the guest fetches a file from an HTTP server on the rig host, the rig host fetches one from
//! an HTTP server in the guest, and each side's bytes are checked. The second NIC has two queue
//! pairs on a multi-queue tap.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;

use common::{marker_token, run_rig, viaduct_command, VIADUCT_TIMED_OUT};

/// Guest side of the NICs: MAC, guest address, rig-host (tap) address.
const NICS: [(&str, &str, &str); 2] = [
    ("52:54:00:0a:00:02", "169.254.10.2/16", "169.254.10.1"),
    ("52:54:00:14:00:02", "169.254.20.2/24", "169.254.20.1"),
];

/// Rig-host lines: an HTTP server on port 8080 serving `host.txt`, and a background job that
/// fetches `guest.txt` from each guest address once it answers, records what it got in
/// /tmp/net-result, then serves `done.txt` so the guest may power off. The job writes nothing
/// to the console (the shell's "Terminated" for each timed-out try would split guest lines).
fn host_side(host_token: &str, guest_ips: &[&str]) -> String {
    format!(
        "mkdir -p /tmp/hostwww\n\
         echo host-{host_token} >/tmp/hostwww/host.txt\n\
         httpd -p 8080 -h /tmp/hostwww || echo RIG-NOTE: httpd did not start\n\
         : >/tmp/net-result\n\
         (\n\
           for ip in {ips}; do\n\
             got=\n\
             for i in $(seq 1 200); do\n\
               got=$(timeout 3 wget -q -O - http://$ip/guest.txt 2>/dev/null) && [ -n \"$got\" ] && break\n\
               sleep 1\n\
             done\n\
             echo \"RIG-NET-FROM-GUEST=$ip,$got\" >>/tmp/net-result\n\
           done\n\
           echo done >/tmp/hostwww/done.txt\n\
         ) >/dev/null 2>&1 &\n",
        ips = guest_ips.join(" ")
    )
}

#[test]
fn guest_and_rig_host_reach_each_other_over_two_nics_one_multiqueue() {
    let test = "guest_and_rig_host_reach_each_other_over_two_nics_one_multiqueue";
    let (marker, host_token, guest_token) = (marker_token(), marker_token(), marker_token());
    let spec: Vec<String> = NICS
        .iter()
        .map(|(mac, ip, peer)| format!("{mac},{ip},{peer}"))
        .collect();
    let cmdline = format!(
        "console=ttyS0 quiet viaduct_marker={marker} viaduct_action=net-io \
         viaduct_net={} viaduct_net_token={guest_token}",
        spec.join("+")
    );
    let guest_ips: Vec<&str> = NICS
        .iter()
        .map(|(_, ip, _)| ip.split('/').next().unwrap())
        .collect();
    let scenario = host_side(&host_token, &guest_ips)
        + &viaduct_command(&format!(
            "--kernel /guest/bzImage --initramfs /guest/initramfs.cpio.gz \
             --cmdline \"{cmdline}\" --cpus boot=2 --memory size=512M --serial tty \
             --console off \
             --net tap=vtap0,ip=169.254.10.1,mask=255.255.0.0,mac={},id=lan0 \
             tap=vtap1,ip=169.254.20.1,mask=255.255.255.0,mac={},num_queues=4,queue_size=512",
            NICS[0].0, NICS[1].0
        ))
        + "cat /tmp/net-result\n\
           echo RIG-TAPS-AFTER=$(ls /sys/class/net | grep -c vtap)\n";
    let run = run_rig(test, &scenario);
    let context = run.context();
    assert_eq!(
        run.guest_marker(),
        Some(marker.as_str()),
        "guest marker (did the guest boot?)\n{context}"
    );
    let errors = run.values("GUEST-ERROR");
    assert!(errors.is_empty(), "guest errors: {errors:?}\n{context}");

    // Both NICs are virtio-net, found by MAC; the second has its two queue pairs.
    let ifs = run.values("GUEST-NET-IF");
    for (n, (mac, _, _)) in NICS.iter().enumerate() {
        let line = ifs
            .iter()
            .find(|v| v.starts_with(mac))
            .unwrap_or_else(|| panic!("no NIC with MAC {mac}: {ifs:?}\n{context}"));
        assert!(line.contains(",virtio_net,"), "{line}\n{context}");
        let queues = if n == 0 { "rx_queues=1" } else { "rx_queues=2" };
        assert!(line.ends_with(queues), "{line}: wanted {queues}\n{context}");
    }

    for (mac, ip, _) in NICS {
        // Guest → rig host: ping answered, and the host's file read byte for byte.
        let ping = run.values("GUEST-NET-PING");
        assert!(
            ping.contains(&format!("{mac},3").as_str()),
            "{mac}: ping replies {ping:?}\n{context}"
        );
        let from_host = run.values("GUEST-NET-FROM-HOST");
        assert!(
            from_host.contains(&format!("{mac},host-{host_token}").as_str()),
            "{mac}: the guest did not read the rig host's file: {from_host:?}\n{context}"
        );
        // Rig host → guest: the guest's file, over this NIC's address.
        let ip = ip.split('/').next().unwrap();
        let from_guest = run.values("RIG-NET-FROM-GUEST");
        assert!(
            from_guest.contains(&format!("{ip},guest-{guest_token}").as_str()),
            "{ip}: the rig host did not read the guest's file: {from_guest:?}\n{context}"
        );
        assert!(
            run.values("GUEST-NET-HOST-DONE")
                .contains(&format!("{mac},1").as_str()),
            "{context}"
        );
    }

    let exit = run.viaduct_exit();
    assert_ne!(
        exit,
        Some(VIADUCT_TIMED_OUT),
        "viaduct timed out\n{context}"
    );
    assert_eq!(exit, Some(0), "viaduct's exit status\n{context}");
    let stderr = run.viaduct_stderr().join("\n");
    assert!(stderr.contains("created tap vtap0"), "{context}");
    assert!(stderr.contains("2 queue pair(s)"), "{context}");
    // The taps viaduct created went away with it.
    assert_eq!(run.value("RIG-TAPS-AFTER"), Some("0"), "{context}");
}

#[test]
fn a_tap_that_cannot_be_had_stops_viaduct_before_the_guest() {
    let test = "a_tap_that_cannot_be_had_stops_viaduct_before_the_guest";
    let marker = marker_token();
    let guest = format!(
        "--kernel /guest/bzImage --initramfs /guest/initramfs.cpio.gz \
         --cmdline \"console=ttyS0 quiet viaduct_marker={marker}\" --cpus boot=1 \
         --memory size=256M --serial tty --console off"
    );
    // A persistent single-queue tap owned by the rig host, asked for with two queue pairs; then
    // an fd that is a file, not a tap.
    let scenario = format!(
        "tunctl -t vtapsq >/dev/null || echo RIG-NOTE: tunctl failed\n{}{}",
        viaduct_command(&format!("{guest} --net tap=vtapsq,num_queues=4")),
        viaduct_command(&format!("{guest} --net fd=7 7</proc/version")),
    );
    let all = run_rig(test, &scenario);
    let runs = all.viaduct_runs();
    assert_eq!(runs.len(), 2, "two viaduct runs\n{}", all.context());
    for (run, want) in runs.iter().zip([
        "--net tap=vtapsq,num_queues=4: cannot attach to tap vtapsq (it exists",
        "--net fd=7: fd=7 is not a tap device",
    ]) {
        let context = run.context();
        assert_eq!(run.viaduct_exit(), Some(2), "{context}");
        let stderr = run.viaduct_stderr();
        let errors: Vec<&&str> = stderr.iter().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "one error line: {stderr:?}\n{context}");
        assert!(
            errors[0].contains(want),
            "{}: wanted {want}\n{context}",
            errors[0]
        );
        assert_eq!(run.guest_marker(), None, "no guest may run\n{context}");
    }
}
