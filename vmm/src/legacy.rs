//! The platform's legacy devices on the port-I/O bus: COM1, the ACPI power-management register,
//! the i8042 reset line and pvpanic. Addresses and IRQs come from `arch::layout`.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use arch::layout;
use devices::acpi_pm::AcpiPmDevice;
use devices::bus::Bus;
use devices::exit::ExitNotifier;
use devices::i8042::I8042Device;
use devices::pvpanic::PvPanicDevice;
use devices::serial::{SerialDevice, SERIAL_PORT_COUNT};

use crate::config::SerialMode;
use crate::Error;

/// The COM1 UART plus the eventfd that says the guest drained its input FIFO.
pub struct Com1 {
    /// The UART, shared with the bus.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// Readable when the guest has read the last queued input byte.
    pub input_drained: EventFd,
}

/// The legacy devices of one VM.
pub struct LegacyDevices {
    /// Port-I/O bus holding all of them.
    pub pio: Bus,
    /// COM1, unless `--serial off`.
    pub com1: Option<Com1>,
}

fn serial_output(mode: &SerialMode) -> Result<Option<Box<dyn Write + Send>>, Error> {
    Ok(match mode {
        SerialMode::Off => None,
        SerialMode::Null => Some(Box::new(std::io::sink())),
        SerialMode::Tty => Some(Box::new(std::io::stdout())),
        SerialMode::File(path) => Some(Box::new(
            // Truncated, as cloud-hypervisor does: the file holds this boot's output only.
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(path)
                .map_err(|source| Error::SerialFile {
                    path: path.clone(),
                    source,
                })?,
        )),
    })
}

fn eventfd() -> Result<EventFd, Error> {
    EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)
}

fn insert(
    bus: &Bus,
    dev: Arc<Mutex<dyn devices::bus::BusDevice>>,
    port: u16,
    len: u16,
) -> Result<(), Error> {
    bus.insert(dev, u64::from(port), u64::from(len))
        .map_err(|source| Error::LegacyPort { port, source })
}

/// Creates the legacy devices and connects COM1's interrupt to its GSI.
pub fn create_legacy_devices(
    vm: &VmFd,
    serial: &SerialMode,
    exit: &ExitNotifier,
) -> Result<LegacyDevices, Error> {
    let pio = Bus::new();
    let mut com1 = None;
    if let Some(out) = serial_output(serial)? {
        let irq = eventfd()?;
        vm.register_irqfd(&irq, layout::COM1_IRQ)
            .map_err(|e| Error::Kvm("KVM_IRQFD (COM1)", e))?;
        let input_drained = eventfd()?;
        let drained = input_drained.try_clone().map_err(Error::EventFd)?;
        let dev = Arc::new(Mutex::new(SerialDevice::with_input_drained_event(
            irq, out, drained,
        )));
        insert(
            &pio,
            dev.clone(),
            layout::COM1_PORT,
            u16::from(SERIAL_PORT_COUNT),
        )?;
        com1 = Some(Com1 {
            serial: dev,
            input_drained,
        });
    }
    let pm = AcpiPmDevice::new(
        exit.clone(),
        layout::ACPI_RESET_VALUE,
        layout::ACPI_S5_SLEEP_TYPE,
    )
    .map_err(Error::AcpiPm)?;
    insert(&pio, Arc::new(Mutex::new(pm)), layout::ACPI_PM_PORT, 1)?;
    insert(
        &pio,
        Arc::new(Mutex::new(I8042Device::new(exit.clone()))),
        layout::I8042_PORT,
        layout::I8042_PORT_COUNT,
    )?;
    insert(
        &pio,
        Arc::new(Mutex::new(PvPanicDevice::new(exit.clone()))),
        layout::PVPANIC_PORT,
        1,
    )?;
    Ok(LegacyDevices { pio, com1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_file_is_truncated_at_start_as_cloud_hypervisor_does() {
        let path = std::env::temp_dir().join(format!("viaduct-serial-{}", std::process::id()));
        std::fs::write(&path, b"the previous boot's output\n").unwrap();
        let mut out = serial_output(&SerialMode::File(path.clone()))
            .unwrap()
            .unwrap();
        out.write_all(b"new\n").unwrap();
        drop(out);
        assert_eq!(std::fs::read(&path).unwrap(), b"new\n");
        std::fs::remove_file(&path).unwrap();
    }
}
