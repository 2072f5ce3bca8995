use super::*;
use crate::host::fixture::*;
use serde_json::Value;

/// The host the issue describes: an SR-IOV NIC with two VFs, a GPU with its HDMI audio in one
/// group, an mdev-capable T4, a root port, an NVMe on vfio-pci alone in its group.
fn host() -> Fixture {
    let f = Fixture::new();
    f.pci("0000:00:01.0", BRIDGE, Some("pcieport"), Some(1));
    f.pci("0000:01:00.0", GPU, Some("nvidia"), Some(12));
    f.pci("0000:01:00.1", GPU_AUDIO, Some("snd_hda_intel"), Some(12));
    f.pci("0000:02:00.0", NIC_PF, Some("igb"), Some(13));
    f.sriov("0000:02:00.0", 8, &["0000:02:10.0", "0000:02:10.4"], 20);
    f.pci("0000:03:00.0", T4, Some("nvidia"), Some(14));
    f.mdev_type("0000:03:00.0", "nvidia-63", "GRID T4-1B", 4);
    f.mdev_type("0000:03:00.0", "nvidia-64", "GRID T4-2B", 0);
    f.pci("0000:04:00.0", NVME, Some("vfio-pci"), Some(15));
    f
}

#[test]
fn gpu_and_audio_share_a_group_and_the_audio_blocks_it() {
    let f = host();
    let gpu = PciFunction::read(&f.paths, &Fixture::bdf("0000:01:00.0")).unwrap();
    assert_eq!(
        (gpu.vendor_id, gpu.device_id, gpu.class),
        (0x10de, 0x2204, 0x030000)
    );
    assert_eq!(gpu.driver.as_deref(), Some("nvidia"));
    assert_eq!(gpu.group, Some(12));
    let others: Vec<&str> = gpu.others_in_group().map(|m| m.name.as_str()).collect();
    assert_eq!(others, ["0000:01:00.1"]);
    assert_eq!(gpu.blocking_members().len(), 1);
    let reason = gpu.not_ready_reason().unwrap();
    assert!(reason.contains("on nvidia, not vfio-pci"), "{reason}");
}

#[test]
fn sriov_pf_lists_its_vfs_and_each_vf_names_its_pf() {
    let f = host();
    let pf = PciFunction::read(&f.paths, &Fixture::bdf("0000:02:00.0")).unwrap();
    assert_eq!(
        pf.sriov,
        Some(SriovInfo {
            total_vfs: 8,
            num_vfs: 2,
            vfs: vec!["0000:02:10.0".into(), "0000:02:10.4".into()]
        })
    );
    assert_eq!(pf.physfn, None);
    let vf = PciFunction::read(&f.paths, &Fixture::bdf("0000:02:10.4")).unwrap();
    assert_eq!(vf.physfn.as_deref(), Some("0000:02:00.0"));
    assert_eq!(vf.sriov, None);
    assert_eq!(vf.group, Some(21));
}

#[test]
fn mdev_parent_lists_types_with_names_and_instances() {
    let f = host();
    let t4 = PciFunction::read(&f.paths, &Fixture::bdf("0000:03:00.0")).unwrap();
    assert_eq!(
        t4.mdev_types,
        vec![
            MdevType {
                id: "nvidia-63".into(),
                name: Some("GRID T4-1B".into()),
                available_instances: Some(4)
            },
            MdevType {
                id: "nvidia-64".into(),
                name: Some("GRID T4-2B".into()),
                available_instances: Some(0)
            },
        ]
    );
}

#[test]
fn bridge_and_vfio_device_readiness() {
    let f = host();
    let bridge = PciFunction::read(&f.paths, &Fixture::bdf("0000:00:01.0")).unwrap();
    assert!(bridge.is_bridge());
    assert!(!bridge.ready());
    let nvme = PciFunction::read(&f.paths, &Fixture::bdf("0000:04:00.0")).unwrap();
    assert_eq!(nvme.not_ready_reason(), None);
    assert!(nvme.ready());
}

#[test]
fn vfio_device_with_blocking_sibling_is_not_ready_and_says_bind_group() {
    let f = Fixture::new();
    f.pci("0000:01:00.0", GPU, Some("vfio-pci"), Some(12));
    f.pci("0000:01:00.1", GPU_AUDIO, Some("snd_hda_intel"), Some(12));
    let gpu = PciFunction::read(&f.paths, &Fixture::bdf("0000:01:00.0")).unwrap();
    let reason = gpu.not_ready_reason().unwrap();
    assert!(reason.contains("IOMMU group 12 not viable"), "{reason}");
    assert!(reason.contains("0000:01:00.1 on snd_hda_intel"), "{reason}");
    assert!(
        reason.contains("viaduct bind --group 0000:01:00.0"),
        "{reason}"
    );
}

#[test]
fn list_is_sorted_and_filters_by_class() {
    let f = host();
    let all = list(&f.paths).unwrap();
    let bdfs: Vec<&str> = all.iter().map(|d| d.bdf.as_str()).collect();
    assert_eq!(
        bdfs,
        [
            "0000:00:01.0",
            "0000:01:00.0",
            "0000:01:00.1",
            "0000:02:00.0",
            "0000:02:10.0",
            "0000:02:10.4",
            "0000:03:00.0",
            "0000:04:00.0"
        ]
    );
    let gpus: Vec<&str> = all
        .iter()
        .filter(|d| ClassFilter::Gpu.matches(d.class))
        .map(|d| d.bdf.as_str())
        .collect();
    assert_eq!(gpus, ["0000:01:00.0", "0000:03:00.0"]);
    assert_eq!(
        all.iter()
            .filter(|d| ClassFilter::Net.matches(d.class))
            .count(),
        3
    );
    assert_eq!(
        all.iter()
            .filter(|d| ClassFilter::Storage.matches(d.class))
            .count(),
        1
    );
}

#[test]
fn json_carries_every_field() {
    let f = host();
    let gpu = PciFunction::read(&f.paths, &Fixture::bdf("0000:01:00.0")).unwrap();
    let v: Value = serde_json::from_str(&serde_json::to_string(&gpu.to_record()).unwrap()).unwrap();
    assert_eq!(v.get("bdf").unwrap().as_str(), Some("0000:01:00.0"));
    assert_eq!(v.get("vendor_id").unwrap().as_str(), Some("10de"));
    assert_eq!(v.get("device_id").unwrap().as_str(), Some("2204"));
    assert_eq!(v.get("class").unwrap().as_str(), Some("030000"));
    assert_eq!(v.get("driver").unwrap().as_str(), Some("nvidia"));
    assert_eq!(v.get("iommu_group").unwrap().as_i64(), Some(12));
    let members = v.get("group_members").unwrap().as_array().unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(
        members[0].get("bdf").unwrap().as_str(),
        Some("0000:01:00.1")
    );
    assert_eq!(
        members[0].get("driver").unwrap().as_str(),
        Some("snd_hda_intel")
    );
    assert_eq!(
        members[0].get("blocks_group").unwrap().as_bool(),
        Some(true)
    );
    assert_eq!(v.get("sriov"), Some(&Value::Null));
    assert_eq!(v.get("ready").unwrap().as_bool(), Some(false));

    let pf = PciFunction::read(&f.paths, &Fixture::bdf("0000:02:00.0")).unwrap();
    let v = serde_json::to_value(pf.to_record()).unwrap();
    let sriov = v.get("sriov").unwrap();
    assert_eq!(sriov.get("totalvfs").unwrap().as_i64(), Some(8));
    assert_eq!(sriov.get("numvfs").unwrap().as_i64(), Some(2));
    let t4 = PciFunction::read(&f.paths, &Fixture::bdf("0000:03:00.0")).unwrap();
    let types = serde_json::to_value(t4.to_record()).unwrap();
    let types = types.get("mdev_types").unwrap().as_array().unwrap();
    assert_eq!(types[0].get("type").unwrap().as_str(), Some("nvidia-63"));
    assert_eq!(
        types[0].get("available_instances").unwrap().as_i64(),
        Some(4)
    );
}

#[test]
fn json_keys_order_and_nulls_are_fixed() {
    let f = host();
    let gpu = PciFunction::read(&f.paths, &Fixture::bdf("0000:01:00.0")).unwrap();
    let text = serde_json::to_string(&gpu.to_record()).unwrap();
    assert_eq!(
        text,
        concat!(
            r#"{"bdf":"0000:01:00.0","vendor_id":"10de","device_id":"2204","class":"030000","#,
            r#""class_name":"VGA","driver":"nvidia","driver_override":null,"iommu_group":12,"#,
            r#""group_members":[{"bdf":"0000:01:00.1","ids":"10de:1aef","class_name":"audio","#,
            r#""driver":"snd_hda_intel","blocks_group":true}],"sriov":null,"physfn":null,"#,
            r#""mdev_types":[],"ready":false,"#,
            r#""not_ready_reason":"on nvidia, not vfio-pci: `viaduct bind 0000:01:00.0`"}"#
        )
    );
    let pf = PciFunction::read(&f.paths, &Fixture::bdf("0000:02:00.0")).unwrap();
    let sriov = serde_json::to_string(&pf.to_record().sriov).unwrap();
    assert_eq!(
        sriov,
        r#"{"totalvfs":8,"numvfs":2,"vfs":["0000:02:10.0","0000:02:10.4"]}"#
    );
    let t4 = PciFunction::read(&f.paths, &Fixture::bdf("0000:03:00.0")).unwrap();
    let types = serde_json::to_string(&t4.to_record().mdev_types).unwrap();
    assert_eq!(
        types,
        concat!(
            r#"[{"type":"nvidia-63","name":"GRID T4-1B","available_instances":4},"#,
            r#"{"type":"nvidia-64","name":"GRID T4-2B","available_instances":0}]"#
        )
    );
}

#[test]
fn json_list_is_indented_and_reads_back() {
    assert_eq!(json(&[]), "[]");
    let f = host();
    let all = list(&f.paths).unwrap();
    let text = json(&all);
    assert!(
        text.starts_with("[\n  {\n    \"bdf\": \"0000:00:01.0\",\n"),
        "{text}"
    );
    let back: Vec<DeviceRecord> = serde_json::from_str(&text).unwrap();
    let records: Vec<DeviceRecord> = all.iter().map(PciFunction::to_record).collect();
    assert_eq!(back, records);
}

#[test]
fn table_has_a_row_per_device_with_notes() {
    let f = host();
    let text = table(&list(&f.paths).unwrap());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 9, "{text}");
    assert!(lines[0].starts_with("BDF"), "{text}");
    let gpu = lines
        .iter()
        .find(|l| l.starts_with("0000:01:00.0"))
        .unwrap();
    assert!(gpu.contains("10de:2204"), "{gpu}");
    assert!(
        gpu.contains("group with 0000:01:00.1 (snd_hda_intel)"),
        "{gpu}"
    );
    let pf = lines
        .iter()
        .find(|l| l.starts_with("0000:02:00.0"))
        .unwrap();
    assert!(pf.contains("SR-IOV 2/8 VFs"), "{pf}");
    let vf = lines
        .iter()
        .find(|l| l.starts_with("0000:02:10.0"))
        .unwrap();
    assert!(vf.contains("VF of 0000:02:00.0"), "{vf}");
    let nvme = lines
        .iter()
        .find(|l| l.starts_with("0000:04:00.0"))
        .unwrap();
    assert!(nvme.ends_with(" yes"), "{nvme}");
}
