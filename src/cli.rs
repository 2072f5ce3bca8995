//! The command-line definition (clap), following cloud-hypervisor's flag syntax.
//!
//! This module only describes the flags and collects their raw values; turning them into a
//! validated [`vmm::config::VmConfig`] is [`crate::config`]'s job, so that every value error is
//! reported the same way. Flags that will take several `key=value` sets (`--device`, `--disk`)
//! should use `num_args = 1..` with `ArgAction::Append` and parse each string on its own.

use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// Default `--cpus` value.
pub const DEFAULT_CPUS: &str = "boot=1";
/// Default `--memory` value.
pub const DEFAULT_MEMORY: &str = "size=512M";
/// Default `--serial` value (as in cloud-hypervisor).
pub const DEFAULT_SERIAL: &str = "null";
/// Default `--console` value (as in cloud-hypervisor).
pub const DEFAULT_CONSOLE: &str = "tty";
/// Default `--rng` value (as in cloud-hypervisor).
pub const DEFAULT_RNG: &str = "src=/dev/urandom";
/// Default `--platform` value.
pub const DEFAULT_PLATFORM: &str = "num_pci_segments=1";

/// viaduct: a minimal KVM virtual machine monitor for PCI device passthrough (VFIO).
///
/// Without a command, viaduct runs a VM: `viaduct --kernel bzImage [FLAGS]`. The flags follow
/// cloud-hypervisor's syntax, so existing command lines work unchanged for the features viaduct
/// implements; options it does not implement are rejected with an error rather than silently
/// ignored. The commands prepare the host's devices for passthrough (see docs/host-devices.md).
#[derive(Debug, Parser)]
#[command(
    name = "viaduct",
    version,
    max_term_width = 100,
    subcommand_value_name = "COMMAND",
    subcommand_help_heading = "Host device commands (instead of running a VM)"
)]
pub struct Cli {
    /// A host device command; without one, viaduct runs a VM.
    #[command(subcommand)]
    pub command: Option<Command>,

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
    /// suffix (any case), at least 16M and a multiple of 4K; then cloud-hypervisor's backing
    /// keys.
    ///
    /// `hugepages=on` takes RAM from the host's hugepage pool (`hugepage_size=2M|1G`, default the
    /// host's default size); viaduct refuses to start, saying how many pages are free and how to
    /// reserve more, when the pool is too small. `shared=on` maps RAM shared (a memfd), as
    /// vhost-user needs; the default is private memory. `file=PATH` backs RAM with that file, or
    /// with a fresh file in that directory (e.g. a hugetlbfs mount), mapped shared.
    /// `prefault=on` populates every page before the guest starts, with one thread per host CPU;
    /// not given, that is done just before the DMA mapping with --device for 1G or more of
    /// private anonymous RAM when two or more CPUs are free to do it (at start: besides the
    /// guest's boot vCPUs), and `prefault=off` never does it.
    /// With --device, guest RAM is DMA-mapped while the guest boots; a device gets bus mastering
    /// (DMA) once that is done.
    /// `thp=on|off` (default on) asks for transparent hugepages or refuses them.
    /// `mergeable=on` lets KSM merge identical pages; it cannot be used with --device (pinned
    /// pages do not merge). A size larger than the host's memory is refused at once.
    #[arg(
        long,
        value_name = "size=SIZE[,hugepages=on][,hugepage_size=2M|1G][,shared=on][,file=PATH][,prefault=on|off][,thp=off][,mergeable=on]",
        default_value = DEFAULT_MEMORY
    )]
    pub memory: String,

    /// COM1 serial port: `off` (no UART), `null` (output discarded), `tty` (viaduct's
    /// stdin/stdout) or `file=PATH` (output to PATH, truncated at start as cloud-hypervisor does).
    #[arg(
        long,
        value_name = "off|null|tty|file=PATH",
        default_value = DEFAULT_SERIAL
    )]
    pub serial: String,

    /// virtio console, the guest's `hvc0` (put `console=hvc0` on the kernel command line):
    /// `tty` (viaduct's stdout, with stdin as guest input), `file=PATH` (output to PATH,
    /// truncated at start), `null` (output discarded) or `off` (no device). `--serial tty`
    /// and `--console tty` cannot be used together: for the serial console (ttyS0) on the
    /// terminal, give `--serial tty --console off`.
    #[arg(long, value_name = "off|null|tty|file=PATH", default_value = DEFAULT_CONSOLE)]
    pub console: String,

    /// virtio-rng entropy device, always present as in cloud-hypervisor: `src=PATH` is the
    /// host file or device its bytes are read from.
    #[arg(long, value_name = "src=PATH", default_value = DEFAULT_RNG)]
    pub rng: String,

    /// seccomp: `true` confines every viaduct thread (VMM, vCPUs, API, device workers) to the
    /// system calls it needs, and a forbidden call stops viaduct with a line naming it; `log`
    /// lets forbidden calls through and the kernel logs them (dmesg, `type=1326`); `false`
    /// installs no filter. See docs/seccomp.md.
    #[arg(long, value_name = "true|false|log", default_value = "true")]
    pub seccomp: String,

    /// cloud-hypervisor's `--pvpanic`: viaduct always gives the guest a pvpanic device, so the
    /// flag is accepted and changes nothing.
    #[arg(long, hide = true)]
    pub pvpanic: bool,

    /// The control API: HTTP on a UNIX socket with cloud-hypervisor's endpoints (see
    /// docs/api.md and `viaduct remote`): `path=/run/viaduct.sock` or just the path (the socket
    /// is created mode 0600 and removed at exit; a live one of another process is refused, a
    /// stale one replaced), or `fd=N`, a listening socket handed over. Default: no API.
    #[arg(long = "api-socket", value_name = "path=PATH|fd=N")]
    pub api_socket: Option<String>,

    /// Platform: `num_pci_segments=N,vfio_p2p_dma=on|off`.
    ///
    /// `num_pci_segments` is the number of PCI segments (PCI domains, each a root bus with its
    /// own ECAM window), from 1 to 96; they are numbered from 0 and `--pci-segment` divides the
    /// MMIO apertures among them. `vfio_p2p_dma` (default on) DMA-maps every passed-through
    /// device's BARs into the VFIO container at their guest addresses, so devices can DMA to
    /// each other (GPUDirect P2P, NCCL), and keeps the 64-bit windows inside the host IOMMU's
    /// reach; `x_nv_gpudirect_clique` needs it. The other cloud-hypervisor `--platform` keys
    /// (iommu_segments, iommufd, SMBIOS strings, ...) are not supported.
    #[arg(
        long,
        value_name = "num_pci_segments=N,vfio_p2p_dma=on|off",
        default_value = DEFAULT_PLATFORM
    )]
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
        value_name = "path=SYSFS[,pci_segment=K][,x_nv_gpudirect_clique=N][,id=NAME][,managed=on]",
        num_args = 1..,
        action = ArgAction::Append
    )]
    pub devices: Vec<String>,

    /// A virtio-blk disk, one value per disk. Takes several values and may be repeated; the guest
    /// sees the disks in command-line order (/dev/vda, /dev/vdb, ...).
    ///
    /// Keys: `path` (required) is a disk image or a host block device; it must be readable, and
    /// writable unless `readonly=on`. `image_type=raw|qcow2` says what the file holds; without
    /// it viaduct reads the file's magic: a qcow2 image is served as qcow2, a file with no known
    /// magic as raw (and the guest may then not write an image header at byte 0), and a format
    /// viaduct cannot serve (VHD, VHDX, VMDK, VDI, QED, LUKS, an encrypted or zstd-compressed
    /// qcow2) is refused, never served as raw. `backing_files=on` (with `image_type=qcow2`) opens
    /// a qcow2 image's backing chain read-only (at most 10 deep); without it a qcow2 image that
    /// has a backing file is refused. `readonly=on` shows the guest a read-only disk (default
    /// off). `num_queues` (default 1, up to 255) request queues, each served by its own thread;
    /// `queue_size` (default 256) entries each, a power of two up to 32768. `pci_segment` is the
    /// guest PCI segment, below `--platform num_pci_segments` (default 0). `id` names the disk in
    /// messages and is its serial unless `serial` is given; ids are unique, and an id that is
    /// the serial must fit one. `serial` is the serial number the guest reads
    /// (/sys/block/vdX/serial), at most 20 printable ASCII bytes. The cloud-hypervisor keys
    /// direct, iommu, vhost_user, socket, the rate limits (bw_*, ops_*, rate_limit_group),
    /// queue_affinity, pci_device_id and sparse are not supported.
    ///
    /// Example: `--disk path=root.qcow2,id=root path=seed.iso,readonly=on,serial=seed`.
    #[arg(
        long = "disk",
        value_name = "path=FILE[,readonly=on|off][,image_type=raw|qcow2][,backing_files=on|off][,num_queues=N][,queue_size=N][,pci_segment=K][,id=NAME][,serial=S]",
        num_args = 1..,
        action = ArgAction::Append
    )]
    pub disks: Vec<String>,

    /// A virtio-net NIC on a host TAP device, one value per NIC. Takes several values and may be
    /// repeated; the guest sees the NICs in command-line order (eth0/ens…, one PCI function each).
    ///
    /// Keys (cloud-hypervisor's): `tap=NAME` opens that tap, creating it when no such interface
    /// exists (creating needs CAP_NET_ADMIN; without `tap=` a `vmtap%d` is created). `ip=` and
    /// `mask=` (default 255.255.255.0) give a tap viaduct creates its host address; an existing
    /// tap is left as it is. `fd=N` or `fd=[N,M,...]` adopts tap fds opened by whoever started
    /// viaduct (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR), one per queue pair. `mac` is the guest's MAC
    /// (default: random, locally administered). `num_queues` counts RX plus TX queues: even,
    /// default 2 (one pair); more pairs need a multi-queue tap. `queue_size` is a power of two
    /// up to 32768 (default 256). `id` names the NIC in messages; `pci_segment` as for --disk.
    /// `offload_csum` and `offload_tso` (default on) offer checksum and TCP segmentation
    /// offload. Not supported: host_mac, mtu, iommu, vhost_user, socket, vhost_mode, the rate
    /// limits (bw_*, ops_*, rate_limit_group), pci_device_id, offload_ufo. A tap that cannot be
    /// opened or created, a bad MAC, or an fd that is not a tap stops viaduct before the VM
    /// starts. See docs/network.md.
    ///
    /// Example: `--net tap=tap0,ip=169.254.10.1,mask=255.255.0.0,mac=52:54:00:12:34:56`.
    #[arg(
        long = "net",
        value_name = "tap=NAME|fd=N[,mac=MAC][,ip=IP,mask=MASK][,num_queues=N][,queue_size=N][,id=NAME]",
        num_args = 1..,
        action = ArgAction::Append
    )]
    pub nets: Vec<String>,

    /// Log more: none = warnings and errors, -v = info, -vv = debug, -vvv = trace. RUST_LOG, when
    /// set, overrides this (e.g. RUST_LOG=vmm=trace).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
}

impl Cli {
    /// Parses `args` (the program name first) like [`Parser::try_parse_from`], and also refuses
    /// VM flags next to a command (`viaduct --kernel k devices`): a command does not run a VM.
    /// `-v` goes with either.
    pub fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut command = Cli::command();
        let matches = command.try_get_matches_from_mut(args)?;
        let cli = Cli::from_arg_matches(&matches)?;
        if let Some((name, _)) = matches.subcommand() {
            let given: Vec<String> = command
                .get_arguments()
                .filter(|a| a.get_id() != "verbose")
                .filter(|a| {
                    matches.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine)
                })
                .map(|a| format!("--{}", a.get_long().unwrap_or(a.get_id().as_str())))
                .collect();
            if !given.is_empty() {
                return Err(command.error(
                    ErrorKind::ArgumentConflict,
                    format!(
                        "{} cannot be used with the `{name}` command: the VM flags run a VM, \
                         the commands manage host devices; give one or the other",
                        given.join(", ")
                    ),
                ));
            }
        }
        Ok(cli)
    }
}

/// Which devices `viaduct devices` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceClass {
    /// Display controllers and processing accelerators (class 03, 12).
    Gpu,
    /// Network controllers (class 02).
    Net,
    /// Mass-storage controllers (class 01).
    Storage,
    /// Every PCI device.
    All,
}

/// The host device commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the host's PCI devices: ids, class, driver, IOMMU group and its other members,
    /// SR-IOV, mediated device types, and whether each is ready for passthrough (bound to
    /// vfio-pci in a viable group).
    Devices {
        /// Only this kind of device.
        #[arg(long, value_enum, default_value = "all")]
        class: DeviceClass,
        /// Print JSON (an array with one object per device) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Hand devices to vfio-pci (driver_override, unbind, bind), remembering their drivers in
    /// /run/viaduct/bound.json for `viaduct unbind`. vfio-pci must be loaded (modprobe
    /// vfio-pci); nothing is loaded for you.
    ///
    /// PCI bridges and the device holding the root filesystem are refused unless --force. The
    /// other members of each device's IOMMU group that must follow are listed; --group binds
    /// them too.
    Bind {
        /// Devices, as DDDD:BB:DD.F, BB:DD.F or their sysfs paths.
        #[arg(required = true, value_name = "BDF")]
        devices: Vec<String>,
        /// Also bind the members of each device's IOMMU group that are on host drivers.
        #[arg(long)]
        group: bool,
        /// Bind bridges and the root filesystem's device too.
        #[arg(long)]
        force: bool,
    },
    /// Give devices back from vfio-pci to the drivers they had before `viaduct bind` (the
    /// kernel picks one for a device viaduct did not bind), and clear driver_override.
    Unbind {
        /// Devices, as DDDD:BB:DD.F, BB:DD.F or their sysfs paths.
        #[arg(required = true, value_name = "BDF")]
        devices: Vec<String>,
        /// Also give back the members of their IOMMU groups that viaduct bound.
        #[arg(long)]
        group: bool,
    },
    /// Set the number of SR-IOV virtual functions of a physical function (0 removes them).
    Sriov {
        /// The physical function.
        #[arg(value_name = "BDF")]
        device: String,
        /// How many VFs, from 0 to the device's sriov_totalvfs.
        #[arg(long, value_name = "N")]
        numvfs: u32,
    },
    /// Create or remove mediated devices (vGPU slices and the like).
    Mdev {
        /// create or remove.
        #[command(subcommand)]
        action: MdevCommand,
    },
    /// Talk to a running viaduct's control API (see --api-socket and docs/api.md), with
    /// ch-remote's commands: ping, info, add-device, remove-device, shutdown, reboot,
    /// power-button, shutdown-vmm.
    Remote {
        /// The API socket of the running viaduct.
        #[arg(long, value_name = "PATH")]
        api_socket: PathBuf,
        /// What to do.
        #[command(subcommand)]
        action: RemoteCommand,
    },
    /// Say, line by line, whether this host is ready for passthrough: IOMMU, /dev/kvm, the vfio
    /// modules, interrupt remapping, each device's group and /dev/vfio node, guest RAM (or
    /// hugepages) and locked memory.
    /// Exits 0 only when nothing failed.
    Check {
        /// Devices to check, as BDFs or sysfs paths. Takes several values and may be repeated.
        #[arg(long = "device", value_name = "PATH", num_args = 1.., action = ArgAction::Append)]
        devices: Vec<String>,
        /// The guest RAM to check, written as for --memory (e.g. `16G,hugepages=on`): against
        /// the host's memory or its hugepage pool, and RLIMIT_MEMLOCK.
        #[arg(long, value_name = "SIZE[,hugepages=on]", default_value = DEFAULT_MEMORY)]
        memory: String,
    },
}

/// `viaduct remote` commands (`ch-remote`'s).
#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Is the VMM there? Prints its version and pid.
    Ping,
    /// The VM's configuration, state and devices (with their guest BDFs and BARs).
    Info,
    /// Hot-add a passthrough device: the same `path=…[,id=…][,pci_segment=…]
    /// [,x_nv_gpudirect_clique=…][,managed=on]` as --device. Prints `{"id", "bdf"}`.
    AddDevice {
        /// The device, written as for --device.
        #[arg(value_name = "path=SYSFS[,id=NAME][,pci_segment=K]")]
        device: String,
    },
    /// Hot-remove a device: the guest is asked to eject it, and it is detached once it has.
    RemoveDevice {
        /// The device's id (as add-device printed it, or as `info` lists it).
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Stop the VM as if it had powered off (viaduct exits 0).
    Shutdown,
    /// Stop the VM as if it had asked to reboot (viaduct exits 0).
    Reboot,
    /// Press the guest's ACPI power button.
    PowerButton,
    /// Stop the VM and viaduct.
    ShutdownVmm,
}

/// `viaduct mdev` actions.
#[derive(Debug, Subcommand)]
pub enum MdevCommand {
    /// Create a mediated device of TYPE (a directory of the parent's mdev_supported_types) on
    /// PARENT; prints its UUID.
    Create {
        /// The parent device, as a BDF.
        #[arg(value_name = "PARENT")]
        parent: String,
        /// The type, e.g. nvidia-63 (`viaduct devices` lists them).
        #[arg(value_name = "TYPE")]
        mdev_type: String,
        /// The new device's UUID (default: a new random one).
        #[arg(long, value_name = "UUID")]
        uuid: Option<String>,
    },
    /// Remove the mediated device UUID.
    Remove {
        /// Its UUID.
        #[arg(value_name = "UUID")]
        uuid: String,
    },
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
        assert_eq!(cli.rng, DEFAULT_RNG);
        assert_eq!(cli.platform, DEFAULT_PLATFORM);
        assert!(cli.pci_segments.is_empty());
        assert!(cli.devices.is_empty());
        assert!(cli.disks.is_empty());
        assert!(cli.command.is_none());
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

    #[test]
    fn disk_takes_several_values_and_repeats() {
        let cli = Cli::try_parse_from([
            "viaduct",
            "--disk",
            "path=/a",
            "path=/b,readonly=on",
            "--kernel",
            "k",
            "--disk=path=/c",
        ])
        .unwrap();
        assert_eq!(cli.disks, ["path=/a", "path=/b,readonly=on", "path=/c"]);
    }

    #[test]
    fn commands_parse_and_vm_flags_do_not_mix_with_them() {
        let cli = Cli::try_parse_from(["viaduct", "devices", "--class", "gpu", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Devices {
                class: DeviceClass::Gpu,
                json: true
            })
        ));
        let cli = Cli::try_parse_from(["viaduct", "-v", "bind", "--group", "01:00.0"]).unwrap();
        assert_eq!(cli.verbose, 1);
        assert!(matches!(
            cli.command,
            Some(Command::Bind { group: true, .. })
        ));
        let cli = Cli::try_parse_from(["viaduct", "check", "--device", "a", "b", "-v"]).unwrap();
        assert_eq!(cli.verbose, 1);
        match cli.command {
            Some(Command::Check { devices, memory }) => {
                assert_eq!(devices, ["a", "b"]);
                assert_eq!(memory, DEFAULT_MEMORY);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "viaduct",
            "mdev",
            "create",
            "0000:03:00.0",
            "nvidia-63",
            "--uuid",
            "u",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Mdev {
                action: MdevCommand::Create { .. }
            })
        ));
        let err = Cli::parse_args(["viaduct", "--kernel", "k", "--memory", "1G", "devices"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--kernel, --memory cannot be used with the `devices` command"),
            "{err}"
        );
        let cli = Cli::parse_args(["viaduct", "-vv", "devices"]).unwrap();
        assert_eq!(cli.verbose, 2);
        assert!(Cli::try_parse_from(["viaduct", "bind"]).is_err());
        assert!(Cli::try_parse_from(["viaduct", "sriov", "0000:02:00.0"]).is_err());
    }
}
