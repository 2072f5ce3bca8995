//! The virtio console (`--console`, the guest's `hvc0`) and the virtio-rng device (`--rng`),
//! each a virtio-pci function on segment 0, attached in cloud-hypervisor's order: the console
//! before the disks, the rng after them, with its ids (`__console`, `__rng`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use log::info;

use devices::virtio::console::{ConsoleSize, VirtioConsole};
use devices::virtio::pci::VirtioPciDevice;
use devices::virtio::rng::VirtioRng;
use devices::virtio::VirtioDevice;
use pci::bar::BarKind;
use pci::routing::InterruptRouter;

use crate::config::{ConsoleMode, RngConfig};
use crate::device_manager::{
    AttachError, AttachedInfo, BuildError, DeviceManager, Doorbell, PciFunction,
};
use crate::memory::GuestMemoryMmap;
use crate::Error;

/// The PCI segment both devices sit on.
pub const SEGMENT: u16 = 0;

/// The BAR each of them needs (for the layout, before they exist).
pub fn bar_spec() -> pci::bar::BarSpec {
    pci::bar::BarSpec::new(
        devices::virtio::pci::layout::VIRTIO_BAR,
        devices::virtio::pci::layout::BAR_SIZE,
        BarKind::Mem64,
    )
}

/// The terminal size of stdout, when it is a terminal (0 × 0 otherwise).
pub(crate) fn terminal_size() -> ConsoleSize {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` into `ws`, which outlives the call.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok {
        ConsoleSize {
            cols: ws.ws_col,
            rows: ws.ws_row,
        }
    } else {
        ConsoleSize::default()
    }
}

/// The console device `mode` asks for, its output opened (a `file=` truncated, as
/// cloud-hypervisor does); `None` for `off`.
pub fn console_device(mode: &ConsoleMode) -> Result<Option<VirtioConsole>, Error> {
    let (output, input, size): (Box<dyn Write + Send>, Option<File>, ConsoleSize) = match mode {
        ConsoleMode::Off => return Ok(None),
        ConsoleMode::Null => (Box::new(std::io::sink()), None, ConsoleSize::default()),
        ConsoleMode::Tty => {
            let input = std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map(File::from)
                .map_err(Error::ConsoleInput)?;
            (Box::new(std::io::stdout()), Some(input), terminal_size())
        }
        ConsoleMode::File(path) => {
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(path)
                .map_err(|source| Error::ConsoleFile {
                    path: path.clone(),
                    source,
                })?;
            (Box::new(file), None, ConsoleSize::default())
        }
    };
    Ok(Some(VirtioConsole::new("console", output, input, size)))
}

/// The rng device reading `cfg.src`.
pub fn rng_device(cfg: &RngConfig) -> Result<VirtioRng, Error> {
    Ok(VirtioRng::open(&cfg.src)?)
}

/// Attaches `device` as a virtio-pci function on segment 0 named `id`, DMA into `mem`,
/// interrupts through `router`, its doorbells registered as ioeventfds.
pub fn attach(
    manager: &DeviceManager,
    id: &str,
    device: Box<dyn VirtioDevice>,
    mem: &Arc<GuestMemoryMmap>,
    router: &Arc<dyn InterruptRouter>,
) -> Result<AttachedInfo, AttachError> {
    let info = manager.attach(id, SEGMENT, |_placement| {
        let device = VirtioPciDevice::new(device, mem.clone(), router.clone(), BarKind::Mem64)?;
        let doorbells = device
            .ioeventfds()
            .into_iter()
            .map(|(bar, offset, event)| {
                event
                    .try_clone()
                    .map(|event| Doorbell { bar, offset, event })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(BuildError::EventFd)?;
        Ok(PciFunction {
            device: Arc::new(Mutex::new(device)),
            direct: Vec::new(),
            doorbells,
            peer_dma: None,
        })
    })?;
    info!("{id}: virtio at {:04x}:{}", info.segment, info.bdf);
    Ok(info)
}
