//! Host device commands in the nested rig (see `docs/rig.md`): the rig host (L2) has real sysfs
//! with QEMU's emulated NVMe behind an emulated VT-d, so `viaduct devices`, `bind`, `unbind`,
//! `check` and `--device …,managed=on` run against a real kernel here.
//!
//! The rig host's root filesystem is its initramfs, so no NVMe holds it and binding is allowed.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;

use common::{
    device_path, l2_nvme_marker, marker_token, viaduct_command, RigHost, RigRun, SLOT_NVME_A,
    VIADUCT_TIMED_OUT,
};
use serde_json::Value;

/// Scenario lines that run `viaduct <args>` as step `name`: every output line (stdout and
/// stderr) prefixed with `<name>| `, then `<name>| RIG-STEP-EXIT=<status>`.
fn step(name: &str, args: &str) -> String {
    format!(
        "{{ timeout -s KILL 120 viaduct {args} 2>&1; echo \"RIG-STEP-EXIT=$?\"; }} | \
         sed 's/^/{name}| /'\n"
    )
}

/// Scenario lines that print `RIG-<tag>-DRIVER=<driver or none>` for `bdf`.
fn driver_line(tag: &str, bdf: &str) -> String {
    format!(
        "d=/sys/bus/pci/devices/{bdf}/driver; \
         if [ -e $d ]; then echo \"RIG-{tag}-DRIVER=$(basename $(readlink $d))\"; \
         else echo \"RIG-{tag}-DRIVER=none\"; fi\n"
    )
}

/// Scenario lines that wait up to 20 s for the NVMe namespace of `bdf` to appear and print
/// `RIG-<tag>-NS=<name or none>` and the marker line of [`l2_nvme_marker`] as `RIG-<tag>-…`.
fn namespace_back(tag: &str, bdf: &str) -> String {
    format!(
        "n=0; while ! ls /sys/bus/pci/devices/{bdf}/nvme/nvme*/nvme*n1 >/dev/null 2>&1 && \
         [ $n -lt 200 ]; do sleep 0.1; n=$((n+1)); done\n\
         ns=$(ls -d /sys/bus/pci/devices/{bdf}/nvme/nvme*/nvme*n1 2>/dev/null | head -n1)\n\
         ns=${{ns##*/}}; n=0; while [ -n \"$ns\" ] && [ ! -b /dev/$ns ] && [ $n -lt 50 ]; do \
         sleep 0.1; n=$((n+1)); done\n\
         echo \"RIG-{tag}-NS=${{ns:-none}} dev=$(ls /dev/$ns 2>/dev/null || echo missing)\"\n\
         {}",
        l2_nvme_marker(bdf).replace("RIG-L2-NVME-MARKER", &format!("RIG-{tag}-MARKER"))
    )
}

/// The output lines of step `name` (without the prefix).
fn step_lines<'a>(run: &'a RigRun, name: &str) -> Vec<&'a str> {
    let prefix = format!("{name}| ");
    run.log
        .lines()
        .map(|l| l.trim_end_matches(['\r', '\0']))
        .filter_map(|l| l.split_once(prefix.as_str()).map(|(_, rest)| rest))
        .collect()
}

/// The exit status of step `name`.
fn step_exit(run: &RigRun, name: &str) -> i32 {
    step_lines(run, name)
        .iter()
        .find_map(|l| l.strip_prefix("RIG-STEP-EXIT="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("step {name} did not finish\n{}", run.context()))
}

/// Everything step `name` printed, one string.
fn step_text(run: &RigRun, name: &str) -> String {
    step_lines(run, name).join("\n")
}

#[test]
fn devices_bind_unbind_and_check_against_the_rig_hosts_kernel() {
    let test = "devices_bind_unbind_and_check_against_the_rig_hosts_kernel";
    let mut host = RigHost::new(test);
    let disk = host.nvme("nva", SLOT_NVME_A, &marker_token());
    let bdf = disk.bdf.as_str();
    let dev = format!("/sys/bus/pci/devices/{bdf}/");
    let scenario = format!(
        "echo \"RIG-NVME-GROUP=$(basename $(readlink /sys/bus/pci/devices/{bdf}/iommu_group))\"\n\
         echo \"RIG-DEVICES-JSON=$(viaduct devices --json | tr -d '\\n')\"\n"
    ) + &step("check-unbound", &format!("check --device {bdf}"))
        + &step("bind", &format!("bind {bdf}"))
        + &driver_line("BOUND", bdf)
        + "echo \"RIG-BOUND-NVME0N1=$(ls /dev/nvme0n1 2>/dev/null || echo absent)\"\n"
        + &step("devices-bound", "devices --class storage")
        + &step(
            "check-bound",
            &format!("check --device {dev} --memory 512M"),
        )
        + &step("unbind", &format!("unbind {bdf}"))
        + &driver_line("UNBOUND", bdf)
        + &namespace_back("UNBOUND", bdf)
        + "for m in vfio_pci vfio_pci_core vfio_iommu_type1 vfio_virqfd vfio; do \
           rmmod $m 2>/dev/null; done\n\
           echo \"RIG-VFIO-MODULE=$(ls -d /sys/module/vfio 2>/dev/null || echo gone)\"\n"
        + &step("check-no-vfio", &format!("check --device {bdf}"))
        + &step("bind-no-vfio", &format!("bind {bdf}"));
    let run = host.run(&scenario);
    let context = run.context();

    // devices --json: the NVMe, its ids, driver and IOMMU group as the kernel has them.
    let group: i64 = run
        .value("RIG-NVME-GROUP")
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("no RIG-NVME-GROUP\n{context}"));
    let json_line = run
        .log
        .lines()
        .find_map(|l| {
            l.trim_end_matches(['\r', '\0'])
                .strip_prefix("RIG-DEVICES-JSON=")
        })
        .unwrap_or_else(|| panic!("no RIG-DEVICES-JSON line\n{context}"));
    let list: Value = serde_json::from_str(json_line)
        .unwrap_or_else(|e| panic!("devices --json is not JSON ({e}): {json_line}\n{context}"));
    let nvme = list
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|d| d.get("bdf").and_then(Value::as_str) == Some(bdf))
        })
        .unwrap_or_else(|| panic!("{bdf} not in {json_line}\n{context}"));
    assert_eq!(nvme.get("vendor_id").and_then(Value::as_str), Some("1b36"));
    assert_eq!(nvme.get("device_id").and_then(Value::as_str), Some("0010"));
    assert_eq!(nvme.get("class").and_then(Value::as_str), Some("010802"));
    assert_eq!(nvme.get("driver").and_then(Value::as_str), Some("nvme"));
    assert_eq!(
        nvme.get("iommu_group").and_then(Value::as_i64),
        Some(group),
        "{context}"
    );
    assert_eq!(nvme.get("ready").and_then(Value::as_bool), Some(false));

    // Before the bind, check names the driver in the way.
    assert_eq!(step_exit(&run, "check-unbound"), 1, "{context}");
    let text = step_text(&run, "check-unbound");
    assert!(
        text.contains(&format!("FAIL  {bdf}: on nvme, not vfio-pci")),
        "{text}\n{context}"
    );

    // bind: onto vfio-pci, the host's namespace gone.
    assert_eq!(step_exit(&run, "bind"), 0, "{context}");
    assert!(
        step_text(&run, "bind").contains(&format!("{bdf}: bound to vfio-pci (was on nvme)")),
        "{context}"
    );
    assert_eq!(run.value("RIG-BOUND-DRIVER"), Some("vfio-pci"), "{context}");
    assert_eq!(run.value("RIG-BOUND-NVME0N1"), Some("absent"), "{context}");
    let table = step_text(&run, "devices-bound");
    let row = table
        .lines()
        .find(|l| l.starts_with(bdf))
        .unwrap_or_else(|| panic!("no row for {bdf}: {table}\n{context}"));
    assert!(
        row.contains("vfio-pci") && row.contains(" yes"),
        "{row}\n{context}"
    );

    // check: the rig host is ready for this device.
    let text = step_text(&run, "check-bound");
    assert_eq!(step_exit(&run, "check-bound"), 0, "{text}\n{context}");
    for line in [
        "ok    IOMMU: enabled",
        "ok    /dev/kvm: opened read-write",
        "ok    vfio modules:",
        "ok    interrupt remapping: on",
        &format!("ok    {bdf}: 1b36:0010 NVMe on vfio-pci; IOMMU group {group} viable"),
        "ok    locked memory:",
        "this host is ready for passthrough",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}\n{context}");
    }

    // unbind: back on nvme, the namespace and the marker readable again.
    assert_eq!(step_exit(&run, "unbind"), 0, "{context}");
    assert!(
        step_text(&run, "unbind").contains(&format!("{bdf}: back on nvme")),
        "{context}"
    );
    assert_eq!(run.value("RIG-UNBOUND-DRIVER"), Some("nvme"), "{context}");
    assert_eq!(
        run.value("RIG-UNBOUND-MARKER"),
        Some(format!("{bdf},{}", disk.marker).as_str()),
        "the rig host cannot read its NVMe after unbind\n{context}"
    );
    let ns = run.value("RIG-UNBOUND-NS").unwrap_or("none");
    assert_ne!(ns, "none", "{context}");

    // Without the vfio modules: check fails naming them, bind says modprobe.
    assert_eq!(run.value("RIG-VFIO-MODULE"), Some("gone"), "{context}");
    let text = step_text(&run, "check-no-vfio");
    assert_eq!(step_exit(&run, "check-no-vfio"), 1, "{text}\n{context}");
    assert!(
        text.contains("FAIL  vfio modules:") && text.contains("run modprobe vfio-pci"),
        "{text}\n{context}"
    );
    assert_eq!(step_exit(&run, "bind-no-vfio"), 1, "{context}");
    assert!(
        step_text(&run, "bind-no-vfio").contains("vfio-pci is not loaded: run modprobe vfio-pci"),
        "{context}"
    );
}

/// viaduct's arguments to boot the busybox guest with `guest_args` and `more`.
fn guest_args(guest_args: &str, more: &str) -> String {
    format!(
        "--kernel /guest/bzImage --initramfs /guest/initramfs.cpio.gz \
         --cmdline \"console=ttyS0 quiet {guest_args}\" \
         --cpus boot=1 --memory size=512M --serial tty --console off {more}"
    )
}

#[test]
fn managed_device_is_bound_for_the_vm_and_given_back_after_poweroff_and_panic() {
    let test = "managed_device_is_bound_for_the_vm_and_given_back_after_poweroff_and_panic";
    let mut host = RigHost::new(test);
    let disk = host.nvme("nva", SLOT_NVME_A, &marker_token());
    let bdf = disk.bdf.as_str();
    let marker = marker_token();
    let device = format!("--device {},managed=on", device_path(bdf));
    // The device starts on the rig host's nvme driver: no rig-vfio-bind.
    let scenario = l2_nvme_marker(bdf)
        + &viaduct_command(&guest_args(
            &format!("viaduct_marker={marker} viaduct_action=nvme-io viaduct_write=managed"),
            &device,
        ))
        + &driver_line("AFTER-POWEROFF", bdf)
        + &namespace_back("AFTER-POWEROFF", bdf)
        + "echo \"RIG-STATE-FILE=$(cat /run/viaduct/bound.json 2>/dev/null || echo none)\"\n"
        + &viaduct_command(&guest_args(
            &format!("viaduct_marker={marker} viaduct_action=nvme-io,panic viaduct_write=p"),
            &device,
        ))
        + &driver_line("AFTER-PANIC", bdf)
        + &namespace_back("AFTER-PANIC", bdf);
    let all = host.run(&scenario);
    let runs = all.viaduct_runs();
    assert_eq!(runs.len(), 2, "two viaduct runs\n{}", all.context());
    let context = all.context();

    // Run 1: the guest read the marker through the device viaduct bound for it.
    let first = &runs[0];
    assert_eq!(
        first.guest("NVME-MARKER"),
        Some(disk.marker.as_str()),
        "the guest did not read the marker\n{}",
        first.context()
    );
    assert_eq!(first.guest("NVME-WROTE"), Some("managed"), "{context}");
    assert_eq!(first.viaduct_exit(), Some(0), "{}", first.context());
    let stderr = first.viaduct_stderr().join("\n");
    assert!(
        stderr.contains(&format!(
            "managed device: bound {bdf} to vfio-pci (from nvme)"
        )),
        "{stderr}\n{context}"
    );
    assert!(
        stderr.contains(&format!("managed device: gave {bdf} back to nvme")),
        "{stderr}\n{context}"
    );
    // After it: the rig host's nvme driver has it again and reads the marker; no record left.
    assert_eq!(
        all.value("RIG-AFTER-POWEROFF-DRIVER"),
        Some("nvme"),
        "{context}"
    );
    assert_eq!(
        all.value("RIG-AFTER-POWEROFF-MARKER"),
        Some(format!("{bdf},{}", disk.marker).as_str()),
        "{context}"
    );
    assert_eq!(all.value("RIG-STATE-FILE"), Some("none"), "{context}");
    assert_eq!(
        disk.token_at(1),
        "p",
        "the second guest's write is in sector 1"
    );

    // Run 2: the guest panicked; viaduct failed, and still gave the device back.
    let second = &runs[1];
    let status = second.viaduct_exit().unwrap_or(0);
    assert!(
        status != 0 && status != VIADUCT_TIMED_OUT,
        "panic run exit {status}\n{}",
        second.context()
    );
    assert_eq!(
        all.value("RIG-AFTER-PANIC-DRIVER"),
        Some("nvme"),
        "{context}"
    );
    assert_eq!(
        all.value("RIG-AFTER-PANIC-MARKER"),
        Some(format!("{bdf},{}", disk.marker).as_str()),
        "{context}"
    );
}
