//! TAP devices: opening (or creating) a named tap with one file descriptor per queue pair,
//! adopting tap fds handed over by an orchestrator, configuring the host side (address, mask,
//! link up) and the offloads the guest negotiated.
//!
//! Every tap is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (plus `IFF_MULTI_QUEUE` for
//! several queue pairs) and a 12-byte virtio-net header (`virtio_net_hdr_v1`), the header a
//! virtio 1.x guest puts in front of every frame, so frames move between the guest's rings and
//! the tap without being rewritten. The fds are non-blocking: the worker waits in epoll.

use std::fs::OpenOptions;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Bytes of the header in front of every frame (`virtio_net_hdr_v1`, VERSION_1 always on).
pub const VNET_HDR_LEN: usize = 12;
/// Longest interface name, without the terminating NUL.
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;
/// The name template of taps created without `tap=`: the kernel picks the number.
pub const DEFAULT_NAME_TEMPLATE: &str = "vmtap%d";

/// Why a tap could not be opened or configured. Each message names the tap and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot be an interface name.
    #[error(
        "tap name {0:?} is not a valid interface name (1 to {MAX_NAME_LEN} bytes, no '/', ':' \
         or whitespace)"
    )]
    InvalidName(String),
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun (is the tun module loaded? `modprobe tun`)")]
    OpenTun(#[source] io::Error),
    /// `/dev/net/tun` exists but this user may not open it.
    #[error(
        "no permission to open /dev/net/tun for tap {name}: run viaduct as root, or give its \
         user access to /dev/net/tun (usually mode 0666) and a tap made beforehand (`ip tuntap \
         add {name} mode tap user $USER`)"
    )]
    TunDenied {
        /// The tap.
        name: String,
    },
    /// Several queue pairs asked of a kernel without multi-queue taps.
    #[error("this kernel's tap driver has no IFF_MULTI_QUEUE; use num_queues=2 (one queue pair)")]
    NoMultiQueue,
    /// Creating the tap needs CAP_NET_ADMIN.
    #[error(
        "tap {name} does not exist and viaduct may not create it (no CAP_NET_ADMIN); create it \
         first, e.g. `ip tuntap add {name} mode tap user $USER{mq}`, or run viaduct as root"
    )]
    CreateDenied {
        /// The tap.
        name: String,
        /// " multi_queue" when several queue pairs are asked for.
        mq: &'static str,
    },
    /// The interface exists but cannot be used as this tap (not a tap, or not multi-queue, or
    /// busy).
    #[error(
        "cannot attach to tap {name}{hint}: TUNSETIFF failed",
        hint = if *.exists { " (it exists: is it a tap, made with `multi_queue` when \
            num_queues > 2, and not in use by another process?)" } else { "" }
    )]
    Attach {
        /// The tap.
        name: String,
        /// Whether the interface existed already.
        exists: bool,
        /// What TUNSETIFF said.
        source: io::Error,
    },
    /// A tap ioctl failed.
    #[error("tap {name}: {op} failed")]
    Ioctl {
        /// The tap.
        name: String,
        /// The ioctl.
        op: &'static str,
        /// What it said.
        source: io::Error,
    },
    /// `fd=N` is not an open file descriptor.
    #[error("fd={fd} is not an open file descriptor of viaduct (pass it to viaduct open)")]
    FdNotOpen {
        /// The fd.
        fd: RawFd,
    },
    /// `fd=N` is open but not a tap.
    #[error("fd={fd} is not a tap device: TUNGETIFF failed")]
    FdNotTap {
        /// The fd.
        fd: RawFd,
        /// What TUNGETIFF said.
        source: io::Error,
    },
    /// `fd=N` is a tun (layer 3) device or lacks the virtio-net header.
    #[error(
        "fd={fd} ({name}) was opened without {missing}; open the tap with IFF_TAP | IFF_NO_PI | \
         IFF_VNET_HDR"
    )]
    FdFlags {
        /// The fd.
        fd: RawFd,
        /// Its interface.
        name: String,
        /// The flags it lacks.
        missing: &'static str,
    },
    /// Configuring the host side of the tap failed.
    #[error("tap {name}: cannot {what} (needs CAP_NET_ADMIN)")]
    HostConfig {
        /// The tap.
        name: String,
        /// What was being done.
        what: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
}

/// One file descriptor of a tap (one queue pair's).
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

/// Whether `name` is a valid Linux interface name (`dev_valid_name`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// Whether a network interface called `name` exists on the host.
pub fn interface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn ifreq_named(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data (a name array and a union of plain data); all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes().take(MAX_NAME_LEN)) {
        *dst = src as libc::c_char;
    }
    ifr
}

fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `ioctl(fd, request, arg)` → `io::Result`.
///
/// # Safety
/// `arg` must be what `request` expects (a pointer to a live object of the right type, or an
/// integer).
unsafe fn ioctl<T>(fd: RawFd, request: libc::c_ulong, arg: T) -> io::Result<()> {
    // SAFETY: the caller guarantees `arg` matches `request`.
    let ret = unsafe { libc::ioctl(fd, request as _, arg) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Tap {
    /// Opens tap `name` (created when it does not exist; `None` creates a `vmtap%d`) with one fd
    /// per queue pair. Returns the fds (the first one's name is the real name) and whether the
    /// interface was created here.
    pub fn open_named(name: Option<&str>, queue_pairs: u16) -> Result<(Vec<Tap>, bool), TapError> {
        if let Some(n) = name {
            if !valid_name(n) {
                return Err(TapError::InvalidName(n.to_string()));
            }
        }
        let existed = name.is_some_and(interface_exists);
        let multi = queue_pairs > 1;
        let mut taps: Vec<Tap> = Vec::with_capacity(usize::from(queue_pairs));
        for _ in 0..queue_pairs.max(1) {
            // Every further pair reopens the name the kernel gave the first one.
            let want = taps.first().map(|t| t.name.as_str()).or(name);
            taps.push(Self::open_one(want, multi, existed)?);
        }
        Ok((taps, !existed))
    }

    fn open_one(name: Option<&str>, multi: bool, existed: bool) -> Result<Tap, TapError> {
        let shown = name.unwrap_or(DEFAULT_NAME_TEMPLATE).to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| match e.kind() {
                io::ErrorKind::PermissionDenied => TapError::TunDenied {
                    name: shown.clone(),
                },
                _ => TapError::OpenTun(e),
            })?;
        let fd: OwnedFd = file.into();
        if multi {
            let mut features: libc::c_uint = 0;
            // SAFETY: TUNGETFEATURES writes one unsigned int into `features`, which outlives it.
            unsafe { ioctl(fd.as_raw_fd(), libc::TUNGETFEATURES, &mut features) }.map_err(
                |source| TapError::Ioctl {
                    name: shown.clone(),
                    op: "TUNGETFEATURES",
                    source,
                },
            )?;
            if features & libc::IFF_MULTI_QUEUE as libc::c_uint == 0 {
                return Err(TapError::NoMultiQueue);
            }
        }
        let mut ifr = ifreq_named(name.unwrap_or(DEFAULT_NAME_TEMPLATE));
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if multi {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes the ifreq, which outlives the call.
        if let Err(source) = unsafe { ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } {
            if source.raw_os_error() == Some(libc::EPERM) && !existed {
                return Err(TapError::CreateDenied {
                    name: shown,
                    mq: if multi { " multi_queue" } else { "" },
                });
            }
            return Err(TapError::Attach {
                name: shown,
                exists: existed,
                source,
            });
        }
        let tap = Tap {
            fd,
            name: ifreq_name(&ifr),
        };
        tap.set_vnet_hdr_len()?;
        Ok(tap)
    }

    /// Adopts `fd`, a tap opened by whoever started viaduct (`fd=N`): checks that it is a tap
    /// with the virtio-net header, makes it non-blocking and sets the header length.
    ///
    /// # Safety
    /// `fd` must be a descriptor nothing else in this process owns: the returned `Tap` closes it.
    pub unsafe fn from_fd(fd: RawFd) -> Result<Tap, TapError> {
        // SAFETY: F_GETFL on any integer is harmless; it only tells whether the fd is open.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if fl < 0 {
            return Err(TapError::FdNotOpen { fd });
        }
        let mut ifr = ifreq_named("");
        // SAFETY: TUNGETIFF writes into the ifreq, which outlives the call; on a non-tap fd it
        // fails (ENOTTY or EBADFD) without writing.
        unsafe { ioctl(fd, libc::TUNGETIFF, &mut ifr) }
            .map_err(|source| TapError::FdNotTap { fd, source })?;
        let name = ifreq_name(&ifr);
        // SAFETY: TUNGETIFF filled ifru_flags.
        let flags = i32::from(unsafe { ifr.ifr_ifru.ifru_flags });
        let missing = if flags & libc::IFF_TAP == 0 {
            Some("IFF_TAP (it is a layer-3 tun device)")
        } else if flags & libc::IFF_VNET_HDR == 0 {
            Some("IFF_VNET_HDR")
        } else if flags & libc::IFF_NO_PI == 0 {
            Some("IFF_NO_PI")
        } else {
            None
        };
        if let Some(missing) = missing {
            return Err(TapError::FdFlags { fd, name, missing });
        }
        // SAFETY: the caller hands ownership of the open fd over.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: setting status flags of an fd we own.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
            return Err(TapError::Ioctl {
                name,
                op: "fcntl(O_NONBLOCK)",
                source: io::Error::last_os_error(),
            });
        }
        let tap = Tap { fd: owned, name };
        tap.set_vnet_hdr_len()?;
        Ok(tap)
    }

    /// Wraps any datagram fd as a tap (tests use one end of a socketpair as a fake tap).
    pub fn from_owned(fd: OwnedFd, name: &str) -> Tap {
        Tap {
            fd,
            name: name.to_string(),
        }
    }

    /// The interface name (as the kernel reports it).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn set_vnet_hdr_len(&self) -> Result<(), TapError> {
        let len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which outlives the call.
        unsafe { ioctl(self.fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len) }.map_err(|source| {
            TapError::Ioctl {
                name: self.name.clone(),
                op: "TUNSETVNETHDRSZ",
                source,
            }
        })
    }

    /// `TUNSETOFFLOAD`: which offloads (`TUN_F_*`) the kernel may leave to the guest in frames it
    /// hands us (partial checksums, TSO segments).
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        unsafe {
            ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                flags as libc::c_ulong,
            )
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and both are plain data.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// The host side of tap `name`: sets `address` (with its netmask) when given, and brings the
/// link up unless it is up already (so a tap made beforehand by someone else needs no
/// privilege).
pub fn configure_host(name: &str, address: Option<(Ipv4Addr, Ipv4Addr)>) -> Result<(), TapError> {
    let err = |what: &'static str| {
        let source = io::Error::last_os_error();
        TapError::HostConfig {
            name: name.to_string(),
            what,
            source,
        }
    };
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(err("open a configuration socket"));
    }
    // SAFETY: `raw` is a fresh fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    if let Some((ip, mask)) = address {
        let mut ifr = ifreq_named(name);
        ifr.ifr_ifru.ifru_addr = sockaddr_in(ip);
        // SAFETY: SIOCSIFADDR reads the ifreq, which outlives the call.
        unsafe { ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR, &ifr) }
            .map_err(|_| err("set its IPv4 address"))?;
        let mut ifr = ifreq_named(name);
        ifr.ifr_ifru.ifru_netmask = sockaddr_in(mask);
        // SAFETY: as above.
        unsafe { ioctl(sock.as_raw_fd(), libc::SIOCSIFNETMASK, &ifr) }
            .map_err(|_| err("set its netmask"))?;
    }
    let mut ifr = ifreq_named(name);
    // SAFETY: SIOCGIFFLAGS writes ifru_flags of the ifreq, which outlives the call.
    unsafe { ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) }
        .map_err(|_| err("read its link flags"))?;
    // SAFETY: SIOCGIFFLAGS filled ifru_flags.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    let up = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    if flags & (libc::IFF_UP as libc::c_short) == 0 {
        ifr.ifr_ifru.ifru_flags = flags | up;
        // SAFETY: SIOCSIFFLAGS reads the ifreq, which outlives the call.
        unsafe { ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) }
            .map_err(|_| err("bring its link up"))?;
    }
    Ok(())
}
