//! One virtio-blk request: parse the descriptor chain, do the I/O on the backing file, write
//! the status byte.
//!
//! A request is a device-readable header (`virtio_blk_outhdr`: type, reserved, sector), the
//! data buffers (device-readable for writes, device-writable for reads and GET_ID) and a final
//! device-writable status byte. Guest mistakes (short header, misplaced descriptors, sectors past
//! the end) and host I/O errors complete the request with `VIRTIO_BLK_S_IOERR`; a chain without
//! a writable status byte cannot be answered and is returned to the driver untouched. Nothing
//! the guest puts in a chain can panic the VMM.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{Address, Bytes};

use super::{Disk, SECTOR_SIZE};
use crate::virtio::GuestMemory;

/// Largest bounce buffer used to move data between guest memory and the file.
const CHUNK: usize = 1 << 20;
/// Bytes of `virtio_blk_outhdr`.
const HEADER_LEN: usize = 16;

/// Why a request failed (logged; the guest sees IOERR).
struct Failure {
    /// Data bytes already written into the guest's buffers.
    written: u32,
    reason: String,
    /// Whether the host (not the guest) is at fault, which is worth a warning.
    host: bool,
}

fn guest_error(reason: impl Into<String>) -> Failure {
    Failure {
        written: 0,
        reason: reason.into(),
        host: false,
    }
}

/// Serves the request in `chain` and returns the number of bytes written into the chain
/// (data and status), for the used ring.
pub(crate) fn execute(disk: &Disk, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) -> u32 {
    let head = chain.head_index();
    let descs: Vec<Descriptor> = chain.clone().collect();
    let status_at = descs
        .last()
        .filter(|d| d.is_write_only() && d.len() >= 1)
        .and_then(|d| d.addr().checked_add(u64::from(d.len()) - 1));
    let Some(status_at) = status_at else {
        log::debug!(
            "{}: request {head} has no writable status byte; discarded",
            disk.name
        );
        return 0;
    };
    let (status, written) = match run(disk, mem, chain, &descs) {
        Ok((status, written)) => (status, written),
        Err(f) => {
            if f.host {
                log::warn!("{}: request {head} failed: {}", disk.name, f.reason);
            } else {
                log::debug!("{}: request {head} refused: {}", disk.name, f.reason);
            }
            (VIRTIO_BLK_S_IOERR, f.written)
        }
    };
    if let Err(e) = mem.write_obj(status as u8, status_at) {
        log::debug!(
            "{}: request {head}: cannot write its status at {:#x}: {e}",
            disk.name,
            status_at.0
        );
        return 0;
    }
    written.saturating_add(1)
}

/// Parses and performs the request; returns its status and the data bytes written.
fn run(
    disk: &Disk,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    descs: &[Descriptor],
) -> Result<(u32, u32), Failure> {
    let readable_after_writable = descs
        .iter()
        .skip_while(|d| !d.is_write_only())
        .any(|d| !d.is_write_only());
    if readable_after_writable {
        return Err(guest_error(
            "a device-readable descriptor follows a writable one",
        ));
    }
    let mut reader: Reader<'_> = Reader::new(mem, chain.clone())
        .map_err(|e| guest_error(format!("readable buffers: {e}")))?;
    let mut writer: Writer<'_> =
        Writer::new(mem, chain).map_err(|e| guest_error(format!("writable buffers: {e}")))?;
    // The status byte is the writable region's last byte; `writer` keeps the data before it.
    let data_len = writer.available_bytes().saturating_sub(1);
    writer
        .split_at(data_len)
        .map_err(|e| guest_error(format!("status byte: {e}")))?;

    let mut header = [0u8; HEADER_LEN];
    reader
        .read_exact(&mut header)
        .map_err(|_| guest_error("the header is shorter than 16 bytes"))?;
    let request_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);

    match request_type {
        VIRTIO_BLK_T_IN => read(disk, sector, &mut writer),
        VIRTIO_BLK_T_OUT => write(disk, sector, &mut reader),
        VIRTIO_BLK_T_FLUSH => flush(disk),
        VIRTIO_BLK_T_GET_ID => get_id(disk, &mut writer),
        other => {
            log::debug!("{}: unsupported request type {other}", disk.name);
            Ok((VIRTIO_BLK_S_UNSUPP, 0))
        }
    }
}

/// The byte offset of `sector` if `len` bytes from there lie inside the disk and `len` is a
/// whole number of sectors.
fn byte_range(disk: &Disk, sector: u64, len: usize) -> Result<u64, Failure> {
    if !(len as u64).is_multiple_of(SECTOR_SIZE) {
        return Err(guest_error(format!(
            "data length {len} is not a multiple of {SECTOR_SIZE}"
        )));
    }
    let offset = sector
        .checked_mul(SECTOR_SIZE)
        .filter(|o| {
            o.checked_add(len as u64)
                .is_some_and(|end| end <= disk.capacity_sectors * SECTOR_SIZE)
        })
        .ok_or_else(|| {
            guest_error(format!(
                "sectors {sector}+{} are past the end ({} sectors)",
                len as u64 / SECTOR_SIZE,
                disk.capacity_sectors
            ))
        })?;
    Ok(offset)
}

fn read(disk: &Disk, sector: u64, writer: &mut Writer<'_>) -> Result<(u32, u32), Failure> {
    let len = writer.available_bytes();
    let offset = byte_range(disk, sector, len)?;
    let mut buf = vec![0u8; len.min(CHUNK)];
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(CHUNK);
        let failed = |reason: String, host: bool| Failure {
            written: done as u32,
            reason,
            host,
        };
        disk.file
            .read_exact_at(&mut buf[..n], offset + done as u64)
            .map_err(|e| failed(format!("read at byte {}: {e}", offset + done as u64), true))?;
        writer
            .write_all(&buf[..n])
            .map_err(|e| failed(format!("copy to guest memory: {e}"), false))?;
        done += n;
    }
    Ok((VIRTIO_BLK_S_OK, done as u32))
}

fn write(disk: &Disk, sector: u64, reader: &mut Reader<'_>) -> Result<(u32, u32), Failure> {
    if disk.readonly {
        return Err(guest_error("write to a read-only disk"));
    }
    let len = reader.available_bytes();
    let offset = byte_range(disk, sector, len)?;
    let mut buf = vec![0u8; len.min(CHUNK)];
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(CHUNK);
        reader
            .read_exact(&mut buf[..n])
            .map_err(|e| guest_error(format!("copy from guest memory: {e}")))?;
        disk.file
            .write_all_at(&buf[..n], offset + done as u64)
            .map_err(|e| Failure {
                written: 0,
                reason: format!("write at byte {}: {e}", offset + done as u64),
                host: true,
            })?;
        done += n;
    }
    Ok((VIRTIO_BLK_S_OK, 0))
}

fn flush(disk: &Disk) -> Result<(u32, u32), Failure> {
    if !disk.readonly {
        disk.file.sync_data().map_err(|e| Failure {
            written: 0,
            reason: format!("fdatasync: {e}"),
            host: true,
        })?;
    }
    Ok((VIRTIO_BLK_S_OK, 0))
}

fn get_id(disk: &Disk, writer: &mut Writer<'_>) -> Result<(u32, u32), Failure> {
    let n = writer.available_bytes().min(VIRTIO_BLK_ID_BYTES as usize);
    writer
        .write_all(&disk.serial[..n])
        .map_err(|e| guest_error(format!("copy the serial to guest memory: {e}")))?;
    Ok((VIRTIO_BLK_S_OK, n as u32))
}
