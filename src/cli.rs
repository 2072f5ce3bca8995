//! The command-line definition (clap), following cloud-hypervisor's flag syntax.
//!
//! This module only describes the flags and collects their raw values; turning them into a
//! validated [`vmm::config::VmConfig`] is [`crate::config`]'s job, so that every value error is
//! reported the same way. Flags that will take several `key=value` sets (`--device`, `--disk`)
//! should use `num_args = 1..` with `ArgAction::Append` and parse each string on its own.

use std::path::PathBuf;

use clap::{ArgAction, Parser};

/// Default `--cpus` value.
pub const DEFAULT_CPUS: &str = "boot=1";
/// Default `--memory` value.
pub const DEFAULT_MEMORY: &str = "size=512M";
/// Default `--serial` value (as in cloud-hypervisor).
pub const DEFAULT_SERIAL: &str = "null";
/// Default `--console` value.
pub const DEFAULT_CONSOLE: &str = "off";
/// Default `--platform` value.
pub const DEFAULT_PLATFORM: &str = "num_pci_segments=1";

/// viaduct: a minimal KVM virtual machine monitor for PCI device passthrough (VFIO).
///
/// The flags follow cloud-hypervisor's syntax, so existing command lines work unchanged for the
/// features viaduct implements; options it does not implement are rejected with an error rather
/// than silently ignored.
#[derive(Debug, Parser)]
#[command(name = "viaduct", version, max_term_width = 100)]
pub struct Cli {
    /// Guest kernel image: a bzImage or an ELF vmlinux (the format is detected). Required.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Initramfs loaded next to the kernel. Default: none.
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,

    /// Kernel command line, at most 65535 bytes. Default: empty.
    #[arg(long, value_name = "STRING", allow_hyphen_values = true)]
    pub cmdline: Option<String>,

    /// vCPUs started at boot: `boot=N` or just `N`, with N from 1 to 254.
    #[arg(long, value_name = "boot=N", default_value = DEFAULT_CPUS)]
    pub cpus: String,

    /// Guest RAM: `size=SIZE` or just `SIZE`, a byte count with an optional binary K, M, G or T
    /// suffix (any case). At least 16M and a multiple of 4K.
    #[arg(long, value_name = "size=SIZE", default_value = DEFAULT_MEMORY)]
    pub memory: String,

    /// COM1 serial port: `off` (no UART), `null` (output discarded), `tty` (viaduct's
    /// stdin/stdout) or `file=PATH` (output appended to PATH).
    #[arg(
        long,
        value_name = "off|null|tty|file=PATH",
        default_value = DEFAULT_SERIAL
    )]
    pub serial: String,

    /// virtio console: only `off` (or `null`, the same) since viaduct has no virtio console yet;
    /// use `--serial tty --console off` for a terminal console.
    #[arg(long, value_name = "off|null", default_value = DEFAULT_CONSOLE)]
    pub console: String,

    /// Platform: `num_pci_segments=N`, the number of PCI segments (PCI domains, each a root bus
    /// with its own ECAM window), with N from 1 to 96.
    ///
    /// Segments are numbered from 0; `--pci-segment` divides the MMIO apertures among them. The
    /// other cloud-hypervisor `--platform` keys (iommu_segments, iommufd, vfio_p2p_dma, SMBIOS
    /// strings, ...) are not supported.
    #[arg(long, value_name = "num_pci_segments=N", default_value = DEFAULT_PLATFORM)]
    pub platform: String,

    /// How a PCI segment shares the MMIO apertures, one value per segment:
    /// `pci_segment=K,mmio32_aperture_weight=W,mmio64_aperture_weight=W`. Takes several values
    /// and may be repeated. Default: every segment has weights 1.
    ///
    /// The 640 MiB 32-bit MMIO aperture below 4 GiB and the 64-bit MMIO aperture above guest RAM
    /// are each divided among the PCI segments in proportion to their weights, so giving a
    /// segment a larger weight gives its devices more room for BARs; this matters when many
    /// devices with large 32-bit BARs (GPUs, for instance) sit on one segment. K is a segment
    /// number below `--platform num_pci_segments` (default 0); each weight is a whole number from
    /// 1 to 4294967295 (default 1). Each segment may be configured once; segments not mentioned
    /// keep weights 1. Example: `--platform num_pci_segments=2 --pci-segment
    /// pci_segment=0,mmio32_aperture_weight=2 pci_segment=1` gives segment 0 two thirds of the
    /// 32-bit aperture.
    #[arg(
        long = "pci-segment",
        value_name = "pci_segment=K,mmio32_aperture_weight=W,mmio64_aperture_weight=W",
        num_args = 1..,
        action = ArgAction::Append
    )]
    pub pci_segments: Vec<String>,

    /// A host PCI device passed through to the guest with VFIO, one value per device. Takes
    /// several values and may be repeated; devices are added in command-line order.
    ///
    /// Keys: `path` (required) is the device's sysfs directory,
    /// `/sys/bus/pci/devices/DDDD:BB:DD.F` (list them with `ls /sys/bus/pci/devices`); each
    /// device may be given once. `pci_segment` is the guest PCI segment the device sits on, below
    /// `--platform num_pci_segments` (default 0). `x_nv_gpudirect_clique` advertises the NVIDIA
    /// GPUDirect P2P clique capability, so that the guest driver allows peer-to-peer transfers
    /// between GPUs of the same clique; it is 0 to 15 because the capability's clique-id field is
    /// 4 bits wide. `id` names the device in messages and logs (default: its sysfs name) and must
    /// be unique. The cloud-hypervisor keys fd, iommu, pci_device_id and x_exclude_mmap_bars are
    /// not supported.
    ///
    /// The device must be bound to the vfio-pci driver on the host, together with every other
    /// device in its IOMMU group (see docs/vfio.md); viaduct checks this when the VM starts.
    ///
    /// Example, two GPUs in one P2P clique, the second on segment 1: `--platform
    /// num_pci_segments=2 --device path=/sys/bus/pci/devices/0000:01:00.0,x_nv_gpudirect_clique=0
    /// path=/sys/bus/pci/devices/0000:02:00.0,pci_segment=1,x_nv_gpudirect_clique=0,id=gpu1`.
    #[arg(
        long = "device",
        value_name = "path=SYSFS[,pci_segment=K][,x_nv_gpudirect_clique=N][,id=NAME]",
        num_args = 1..,
        action = ArgAction::Append
    )]
    pub devices: Vec<String>,

    /// Log more: none = warnings and errors, -v = info, -vv = debug, -vvv = trace. RUST_LOG, when
    /// set, overrides this (e.g. RUST_LOG=vmm=trace).
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["viaduct", "--kernel", "k"]).unwrap();
        assert_eq!(cli.cpus, DEFAULT_CPUS);
        assert_eq!(cli.memory, DEFAULT_MEMORY);
        assert_eq!(cli.serial, DEFAULT_SERIAL);
        assert_eq!(cli.console, DEFAULT_CONSOLE);
        assert_eq!(cli.platform, DEFAULT_PLATFORM);
        assert!(cli.pci_segments.is_empty());
        assert!(cli.devices.is_empty());
        assert_eq!(cli.cmdline, None);
        assert_eq!(cli.verbose, 0);
    }

    #[test]
    fn verbosity_counts_and_cmdline_takes_hyphens() {
        let cli =
            Cli::try_parse_from(["viaduct", "-vv", "-v", "--cmdline", "-- init=/bin/sh"]).unwrap();
        assert_eq!(cli.verbose, 3);
        assert_eq!(cli.cmdline.as_deref(), Some("-- init=/bin/sh"));
    }

    #[test]
    fn pci_segment_takes_several_values_and_repeats() {
        let cli = Cli::try_parse_from([
            "viaduct",
            "--pci-segment",
            "pci_segment=0",
            "pci_segment=1",
            "--kernel",
            "k",
            "--pci-segment",
            "pci_segment=2",
            "--platform",
            "num_pci_segments=3",
            "--pci-segment=pci_segment=3",
        ])
        .unwrap();
        assert_eq!(
            cli.pci_segments,
            [
                "pci_segment=0",
                "pci_segment=1",
                "pci_segment=2",
                "pci_segment=3"
            ]
        );
        assert_eq!(cli.kernel.as_deref(), Some(std::path::Path::new("k")));
        assert_eq!(cli.platform, "num_pci_segments=3");
    }

    #[test]
    fn device_takes_several_values_and_repeats() {
        let cli = Cli::try_parse_from([
            "viaduct",
            "--device",
            "path=/a",
            "path=/b,id=b",
            "--kernel",
            "k",
            "--device",
            "path=/c",
            "--device=path=/d,x_nv_gpudirect_clique=0",
        ])
        .unwrap();
        assert_eq!(
            cli.devices,
            [
                "path=/a",
                "path=/b,id=b",
                "path=/c",
                "path=/d,x_nv_gpudirect_clique=0"
            ]
        );
        assert_eq!(cli.kernel.as_deref(), Some(std::path::Path::new("k")));
    }
}
