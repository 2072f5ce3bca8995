//! `--net tap=NAME|fd=N,[mac=…][,ip=…,mask=…][,num_queues=…][,queue_size=…][,id=…]
//! [,pci_segment=…][,offload_csum=…][,offload_tso=…]`: virtio-net NICs, checked into
//! [`NetConfig`]s with their taps open.
//!
//! cloud-hypervisor's keys with its meaning: `tap=` names a tap that is opened when it exists
//! and created when it does not (a `vmtap%d` when `tap=` is absent); `ip`/`mask` set the host
//! side of a tap viaduct creates; `fd=N` (or `fd=[N,M]`, one per queue pair) adopts taps an
//! orchestrator opened; `num_queues` counts RX and TX queues (even, 2 by default);
//! `queue_size` is a power of two (256 by default); a random locally administered MAC is made
//! when `mac=` is absent. The taps are opened while the command line is checked, before any KVM
//! work, so a tap that cannot be had stops viaduct with one line and nothing started.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::sync::Arc;

use devices::virtio::net::{
    self as net, MacAddr, MacError, Offloads, Tap, TapError, DEFAULT_QUEUE_SIZE, MAX_QUEUE_PAIRS,
    MAX_QUEUE_SIZE,
};
use vmm::config::{NetConfig, OpenTaps};

use crate::config::{checked_segment, ConfigError, InvalidValue};
use crate::options::OptionSpec;

/// The host netmask when `ip=` comes without `mask=` (cloud-hypervisor's default mask).
pub const DEFAULT_MASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 0);

/// `--net` keys, and the cloud-hypervisor ones viaduct does not implement.
const NET: OptionSpec = OptionSpec::new(&[
    "tap",
    "ip",
    "mask",
    "mac",
    "fd",
    "num_queues",
    "queue_size",
    "id",
    "pci_segment",
    "offload_csum",
    "offload_tso",
])
.unsupported(&[
    "host_mac",
    "mtu",
    "iommu",
    "vhost_user",
    "socket",
    "vhost_mode",
    "bw_size",
    "bw_one_time_burst",
    "bw_refill_time",
    "ops_size",
    "ops_one_time_burst",
    "ops_refill_time",
    "rate_limit_group",
    "pci_device_id",
    "offload_ufo",
]);

/// Why a `--net` value was rejected.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `mac=` is not a usable MAC.
    #[error("mac")]
    Mac(#[from] MacError),
    /// `ip=`/`mask=` not an IPv4 address.
    #[error("{key}: {value:?} is not an IPv4 address (e.g. {key}={example})")]
    Address {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
        /// An example value.
        example: &'static str,
    },
    /// A mask whose one-bits are not contiguous.
    #[error("mask: {0} is not a netmask (its one-bits must come first, e.g. 255.255.0.0)")]
    Mask(Ipv4Addr),
    /// `mask=` without `ip=`.
    #[error("mask= needs ip= (the host address of the tap)")]
    MaskWithoutIp,
    /// Both `tap=` and `fd=`.
    #[error("give tap=NAME or fd=N, not both")]
    TapAndFd,
    /// `ip`/`mask` with `fd=`.
    #[error("ip= and mask= configure a tap viaduct opens; a tap passed with fd= is configured by whoever opened it")]
    AddressWithFd,
    /// A malformed `fd=`.
    #[error("fd: {0:?} is not a file descriptor number or a list of them (fd=3 or fd=[3,4])")]
    FdSyntax(String),
    /// fd 0, 1 or 2.
    #[error("fd={0} is viaduct's standard input, output or error, not a tap")]
    FdStdio(RawFd),
    /// The same fd twice.
    #[error("fd={0} is given twice; each queue pair needs a tap fd of its own")]
    FdTwice(RawFd),
    /// `num_queues` odd, zero or too large.
    #[error(
        "num_queues={0}: the queues come in RX/TX pairs, so give an even number from 2 to {max}",
        max = MAX_QUEUE_PAIRS * 2
    )]
    NumQueues(u64),
    /// `num_queues` not matching the fds.
    #[error("num_queues={queues} needs {} tap fds (one per queue pair), but fd= gives {fds}", queues / 2)]
    NumQueuesFds {
        /// num_queues.
        queues: u16,
        /// fds given.
        fds: usize,
    },
    /// `queue_size` not a power of two in range.
    #[error("queue_size={0}: give a power of two from 2 to {MAX_QUEUE_SIZE} (default {DEFAULT_QUEUE_SIZE})")]
    QueueSize(u64),
    /// `id=` empty.
    #[error("id= must not be empty; leave id out to have none")]
    IdEmpty,
    /// `id=` not printable.
    #[error("id must consist of printable characters")]
    IdNotPrintable,
    /// Two NICs with one id.
    #[error("id \"{id}\" is already used by --net {first}; give each NIC its own id")]
    DuplicateId {
        /// The id.
        id: String,
        /// The earlier value.
        first: String,
    },
    /// Two NICs on one tap.
    #[error("tap {tap} is already used by --net {first}; give each NIC its own tap")]
    DuplicateTap {
        /// The tap.
        tap: String,
        /// The earlier value.
        first: String,
    },
    /// Two NICs with one MAC.
    #[error("mac {mac} is already used by --net {first}; give each NIC its own MAC")]
    DuplicateMac {
        /// The MAC.
        mac: MacAddr,
        /// The earlier value.
        first: String,
    },
    /// The tap could not be opened, created or configured.
    #[error(transparent)]
    Tap(#[from] TapError),
}

/// Where the NIC's tap comes from.
enum Source {
    Named(Option<String>),
    Fds(Vec<RawFd>),
}

/// One checked `--net` value, its tap not opened yet.
struct NetValue {
    source: Source,
    address: Option<(Ipv4Addr, Ipv4Addr)>,
    mac: MacAddr,
    mac_given: bool,
    pairs: u16,
    queue_size: u16,
    id: Option<String>,
    segment: u64,
    offloads: Offloads,
}

fn parse_fds(value: &str) -> Result<Vec<RawFd>, NetError> {
    let syntax = || NetError::FdSyntax(value.to_string());
    let inner = match value.strip_prefix('[') {
        Some(rest) => rest.strip_suffix(']').ok_or_else(syntax)?,
        None => value,
    };
    let mut fds: Vec<RawFd> = Vec::new();
    for piece in inner.split(',') {
        let fd: RawFd = piece.trim().parse().map_err(|_| syntax())?;
        if fd < 0 {
            return Err(syntax());
        }
        if fd <= 2 {
            return Err(NetError::FdStdio(fd));
        }
        if fds.contains(&fd) {
            return Err(NetError::FdTwice(fd));
        }
        fds.push(fd);
    }
    Ok(fds)
}

fn parse_ipv4(key: &'static str, value: &str, example: &'static str) -> Result<Ipv4Addr, NetError> {
    value.parse().map_err(|_| NetError::Address {
        key,
        value: value.to_string(),
        example,
    })
}

fn parse_net(value: &str) -> Result<NetValue, ConfigError> {
    let invalid = |reason: InvalidValue| ConfigError::invalid("--net", value, reason);
    let net_err = |e: NetError| invalid(InvalidValue::Net(e));
    let options = NET.parse(value).map_err(|e| invalid(e.into()))?;
    let tap = options.get("tap").map(str::to_string);
    let fds = options
        .get("fd")
        .map(parse_fds)
        .transpose()
        .map_err(net_err)?;
    if tap.is_some() && fds.is_some() {
        return Err(net_err(NetError::TapAndFd));
    }
    if let Some(name) = tap.as_deref() {
        if !net::valid_name(name) {
            return Err(net_err(TapError::InvalidName(name.to_string()).into()));
        }
    }
    let ip = options
        .get("ip")
        .map(|v| parse_ipv4("ip", v, "169.254.10.1"))
        .transpose()
        .map_err(net_err)?;
    let mask = options
        .get("mask")
        .map(|v| parse_ipv4("mask", v, "255.255.0.0"))
        .transpose()
        .map_err(net_err)?;
    if let Some(m) = mask {
        let bits = u32::from(m);
        if bits.leading_ones() + bits.trailing_zeros() != 32 {
            return Err(net_err(NetError::Mask(m)));
        }
    }
    let address = match (ip, mask) {
        (Some(ip), mask) => Some((ip, mask.unwrap_or(DEFAULT_MASK))),
        (None, Some(_)) => return Err(net_err(NetError::MaskWithoutIp)),
        (None, None) => None,
    };
    if address.is_some() && fds.is_some() {
        return Err(net_err(NetError::AddressWithFd));
    }
    let mac_given = options.is_set("mac");
    let mac = match options.get("mac") {
        Some(m) => m.parse::<MacAddr>().map_err(|e| net_err(e.into()))?,
        None => MacAddr::random(),
    };
    let queues = options
        .get_int::<u64>("num_queues")
        .map_err(|e| invalid(e.into()))?;
    if let Some(q) = queues {
        if q < 2 || q % 2 != 0 || q > u64::from(MAX_QUEUE_PAIRS) * 2 {
            return Err(net_err(NetError::NumQueues(q)));
        }
    }
    let pairs = match (&fds, queues) {
        (Some(fds), Some(q)) if fds.len() as u64 != q / 2 => {
            return Err(net_err(NetError::NumQueuesFds {
                queues: q as u16,
                fds: fds.len(),
            }))
        }
        (Some(fds), _) if fds.len() > usize::from(MAX_QUEUE_PAIRS) => {
            return Err(net_err(NetError::NumQueues(fds.len() as u64 * 2)))
        }
        (Some(fds), _) => fds.len() as u16,
        (None, Some(q)) => (q / 2) as u16,
        (None, None) => 1,
    };
    let queue_size = match options
        .get_int::<u64>("queue_size")
        .map_err(|e| invalid(e.into()))?
    {
        None => DEFAULT_QUEUE_SIZE,
        Some(s) if (2..=u64::from(MAX_QUEUE_SIZE)).contains(&s) && s.is_power_of_two() => s as u16,
        Some(s) => return Err(net_err(NetError::QueueSize(s))),
    };
    let id = options.get("id").map(str::to_string);
    match id.as_deref() {
        Some("") => return Err(net_err(NetError::IdEmpty)),
        Some(i) if i.chars().any(char::is_control) => {
            return Err(net_err(NetError::IdNotPrintable))
        }
        _ => {}
    }
    let segment = options
        .get_int::<u64>("pci_segment")
        .map_err(|e| invalid(e.into()))?
        .unwrap_or(0);
    let toggle = |key| {
        options
            .get_toggle(key)
            .map(|v| v.unwrap_or(true))
            .map_err(|e| invalid(e.into()))
    };
    let offloads = Offloads {
        csum: toggle("offload_csum")?,
        tso: toggle("offload_tso")?,
    };
    Ok(NetValue {
        source: match fds {
            Some(fds) => Source::Fds(fds),
            None => Source::Named(tap),
        },
        address,
        mac,
        mac_given,
        pairs,
        queue_size,
        id,
        segment,
        offloads,
    })
}

/// Opens (or creates, or adopts) the tap of `v`; sets the host side of a tap it created.
fn open_taps(v: &NetValue) -> Result<Vec<Arc<Tap>>, NetError> {
    let taps = match &v.source {
        Source::Fds(fds) => fds
            .iter()
            // SAFETY: the user handed these fds to viaduct for this NIC (fd=); nothing in
            // viaduct has opened or claimed them (0-2 and duplicates are refused above).
            .map(|&fd| unsafe { Tap::from_fd(fd) })
            .collect::<Result<Vec<_>, _>>()?,
        Source::Named(name) => {
            let (taps, created) = Tap::open_named(name.as_deref(), v.pairs)?;
            let real = taps
                .first()
                .map(|t| t.name().to_string())
                .unwrap_or_default();
            if created {
                log::info!("created tap {real}");
                net::configure_host(&real, v.address)?;
            } else {
                if let Some((ip, mask)) = v.address {
                    log::warn!(
                        "tap {real} exists, so its address is left as it is (ip={ip}, \
                         mask={mask} apply to a tap viaduct creates, as in cloud-hypervisor)"
                    );
                }
                net::configure_host(&real, None)?;
            }
            taps
        }
    };
    Ok(taps.into_iter().map(Arc::new).collect())
}

/// Builds the NIC list from every `--net` value, in command-line order, opening their taps.
/// Every value is checked before the first tap is opened.
pub fn parse_nets(
    values: &[String],
    num_pci_segments: usize,
) -> Result<Vec<NetConfig>, ConfigError> {
    let count = u16::try_from(num_pci_segments).unwrap_or(u16::MAX);
    let mut seen: Vec<(&str, NetValue, u16)> = Vec::with_capacity(values.len());
    for value in values {
        let invalid = |reason: InvalidValue| ConfigError::invalid("--net", value, reason);
        let parsed = parse_net(value)?;
        let segment = checked_segment(parsed.segment, count).map_err(invalid)?;
        let dup = |e: NetError| Err(invalid(InvalidValue::Net(e)));
        if let Some(id) = parsed.id.as_deref() {
            if let Some((first, _, _)) = seen.iter().find(|(_, n, _)| n.id.as_deref() == Some(id)) {
                return dup(NetError::DuplicateId {
                    id: id.to_string(),
                    first: first.to_string(),
                });
            }
        }
        if let Source::Named(Some(tap)) = &parsed.source {
            if let Some((first, _, _)) = seen
                .iter()
                .find(|(_, n, _)| matches!(&n.source, Source::Named(Some(t)) if t == tap))
            {
                return dup(NetError::DuplicateTap {
                    tap: tap.clone(),
                    first: first.to_string(),
                });
            }
        }
        if parsed.mac_given {
            if let Some((first, _, _)) = seen
                .iter()
                .find(|(_, n, _)| n.mac_given && n.mac == parsed.mac)
            {
                return dup(NetError::DuplicateMac {
                    mac: parsed.mac,
                    first: first.to_string(),
                });
            }
        }
        seen.push((value, parsed, segment));
    }
    let mut nets = Vec::with_capacity(seen.len());
    for (value, v, segment) in seen {
        let taps = open_taps(&v)
            .map_err(|e| ConfigError::invalid("--net", value, InvalidValue::Net(e)))?;
        nets.push(NetConfig {
            id: v.id,
            mac: v.mac,
            queue_size: v.queue_size,
            pci_segment: segment,
            offloads: v.offloads,
            taps: OpenTaps(taps),
        });
    }
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_chain;

    fn one(value: &str) -> Result<NetValue, String> {
        parse_net(value).map_err(|e| error_chain(&e))
    }

    #[test]
    fn keys_and_defaults() {
        let v = one("tap=tap7,mac=52:54:00:00:00:07,ip=169.254.7.1,mask=255.255.0.0,num_queues=4,queue_size=512,id=n7,pci_segment=1,offload_tso=off").unwrap();
        assert!(matches!(&v.source, Source::Named(Some(t)) if t == "tap7"));
        assert_eq!(
            v.address,
            Some((Ipv4Addr::new(169, 254, 7, 1), Ipv4Addr::new(255, 255, 0, 0)))
        );
        assert_eq!(v.mac.to_string(), "52:54:00:00:00:07");
        assert!(v.mac_given);
        assert_eq!((v.pairs, v.queue_size, v.segment), (2, 512, 1));
        assert_eq!(v.id.as_deref(), Some("n7"));
        assert_eq!(
            v.offloads,
            Offloads {
                csum: true,
                tso: false
            }
        );

        let v = one("").unwrap();
        assert!(matches!(v.source, Source::Named(None)));
        assert_eq!((v.pairs, v.queue_size), (1, DEFAULT_QUEUE_SIZE));
        assert!(!v.mac_given);
        assert_eq!(v.mac.0[0] & 3, 2, "random MAC is local unicast");
        assert_eq!(v.offloads, Offloads::default());
        assert_eq!(
            one("tap=t,ip=10.0.0.1").unwrap().address,
            Some((Ipv4Addr::new(10, 0, 0, 1), DEFAULT_MASK))
        );
        let v = one("fd=[3,4]").unwrap();
        assert!(matches!(&v.source, Source::Fds(f) if f == &[3, 4]));
        assert_eq!(v.pairs, 2);
        assert_eq!(one("fd=5,num_queues=2").unwrap().pairs, 1);
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let cases = [
            ("mac=52:54:00:00:00", "is not a MAC address"),
            ("mac=01:00:5e:00:00:01", "is a multicast address"),
            ("ip=300.1.1.1", "ip: \"300.1.1.1\" is not an IPv4 address"),
            ("ip=10.0.0.1,mask=255.0.255.0", "is not a netmask"),
            ("mask=255.255.0.0", "mask= needs ip="),
            ("tap=a,fd=3", "not both"),
            ("fd=3,ip=10.0.0.1", "configured by whoever opened it"),
            ("fd=x", "is not a file descriptor number"),
            ("fd=[3,4", "unbalanced"),
            ("fd=[3;4]", "is not a file descriptor number"),
            ("fd=1", "standard input, output or error"),
            ("fd=[3,3]", "is given twice"),
            ("num_queues=3", "even number from 2 to 254"),
            ("num_queues=0", "even number"),
            ("num_queues=256", "even number"),
            (
                "fd=[3,4],num_queues=2",
                "needs 1 tap fds (one per queue pair), but fd= gives 2",
            ),
            ("queue_size=100", "power of two"),
            ("queue_size=65536", "power of two"),
            ("queue_size=1", "power of two"),
            ("id=", "must not be empty"),
            ("tap=a/b", "not a valid interface name"),
            ("tap=0123456789abcdef", "not a valid interface name"),
            (
                "vhost_user=on",
                "cloud-hypervisor option that viaduct does not support",
            ),
            ("mtu=9000", "does not support"),
            ("host_mac=52:54:00:00:00:01", "does not support"),
            ("offload_ufo=on", "does not support"),
            ("offload_csum=maybe", "not on, off, true or false"),
            ("colour=blue", "unknown"),
        ];
        for (value, want) in cases {
            let err = one(value)
                .err()
                .unwrap_or_else(|| panic!("{value} accepted"));
            assert!(err.starts_with("--net "), "{err}");
            assert!(err.contains(want), "{value}: {err}");
        }
    }

    #[test]
    fn ids_taps_and_macs_are_unique_and_checked_before_any_tap_is_opened() {
        let nets = |v: &[&str]| {
            let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            parse_nets(&v, 1).map(|_| ()).map_err(|e| error_chain(&e))
        };
        // The second value is wrong: the first tap (which would need privileges) is never
        // opened, so the error is about the duplicate, not about the tap.
        let e = nets(&["tap=viaducttest0,id=a", "tap=viaducttest1,id=a"]).unwrap_err();
        assert!(
            e.contains("id \"a\" is already used by --net tap=viaducttest0"),
            "{e}"
        );
        let e = nets(&["tap=viaducttest0", "tap=viaducttest0"]).unwrap_err();
        assert!(e.contains("tap viaducttest0 is already used"), "{e}");
        let e = nets(&[
            "tap=viaducttest0,mac=52:54:00:00:00:01",
            "tap=viaducttest1,mac=52:54:00:00:00:01",
        ])
        .unwrap_err();
        assert!(e.contains("mac 52:54:00:00:00:01 is already used"), "{e}");
        let e = nets(&["tap=viaducttest0,pci_segment=1"]).unwrap_err();
        assert!(e.contains("PCI segment 1 does not exist"), "{e}");
    }

    #[test]
    fn an_fd_that_is_not_a_tap_is_one_clear_error() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        let e = parse_nets(&[format!("fd={fd}")], 1)
            .map(|_| ())
            .unwrap_err();
        let e = error_chain(&e);
        assert!(
            e.starts_with(&format!("--net fd={fd}: fd={fd} is not a tap device")),
            "{e}"
        );
        drop(file);
    }
}
