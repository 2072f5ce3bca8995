//! One virtio-blk request: parse the descriptor chain, do the I/O on the image, write the
//! status byte.
//!
//! A request is a device-readable header (`virtio_blk_outhdr`: type, reserved, sector), the
//! data buffers (device-readable for writes, device-writable for reads and GET_ID) and a final
//! device-writable status byte. Guest mistakes (short header, misplaced descriptors, sectors past
//! the end) and host I/O errors complete the request with `VIRTIO_BLK_S_IOERR`; a chain without
//! a writable status byte cannot be answered and is returned to the driver untouched. Nothing
//! the guest puts in a chain can panic the VMM.
//!
//! Data moves with no bounce buffer: the chain's data descriptors become guest-memory slices
//! handed to the image in one vectored call (`preadv`/`pwritev` for raw images).

use std::io::{Read, Write};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::{Disk, SECTOR_SIZE};
use crate::virtio::GuestMemory;

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
                crate::warn_limited!("{}: request {head} failed: {}", disk.name, f.reason);
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
        VIRTIO_BLK_T_IN => {
            let bufs = data_slices(mem, descs, true, 0, 1)?;
            read(disk, sector, &bufs)
        }
        VIRTIO_BLK_T_OUT => {
            let bufs = data_slices(mem, descs, false, HEADER_LEN, 0)?;
            write(disk, sector, &bufs)
        }
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

/// The guest memory of the chain's device-writable (`writable`) or device-readable descriptors,
/// less `skip` bytes at the front (the header) and `drop` at the back (the status byte), as
/// host slices ready for vectored I/O.
fn data_slices<'m>(
    mem: &'m GuestMemory,
    descs: &[Descriptor],
    writable: bool,
    skip: usize,
    drop: usize,
) -> Result<Vec<VolatileSlice<'m>>, Failure> {
    let mut ranges: Vec<(GuestAddress, usize)> = descs
        .iter()
        .filter(|d| d.is_write_only() == writable)
        .map(|d| (d.addr(), d.len() as usize))
        .collect();
    let mut skip = skip;
    while skip > 0 {
        let Some(first) = ranges.first_mut() else {
            break;
        };
        let n = skip.min(first.1);
        first.0 = first.0.unchecked_add(n as u64);
        first.1 -= n;
        skip -= n;
        if first.1 == 0 {
            ranges.remove(0);
        }
    }
    let mut drop = drop;
    while drop > 0 {
        let Some(last) = ranges.last_mut() else {
            break;
        };
        let n = drop.min(last.1);
        last.1 -= n;
        drop -= n;
        if last.1 == 0 {
            ranges.pop();
        }
    }
    let mut slices = Vec::with_capacity(ranges.len());
    for (addr, len) in ranges {
        for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
            let slice = slice.map_err(|e| {
                guest_error(format!("data buffer at {:#x}+{len}: {e}", addr.raw_value()))
            })?;
            slices.push(slice);
        }
    }
    Ok(slices)
}

fn total_len(bufs: &[VolatileSlice<'_>]) -> usize {
    bufs.iter().map(|b| b.len()).sum()
}

fn read(disk: &Disk, sector: u64, bufs: &[VolatileSlice<'_>]) -> Result<(u32, u32), Failure> {
    let len = total_len(bufs);
    let offset = byte_range(disk, sector, len)?;
    disk.backend.read(bufs, offset).map_err(|e| Failure {
        written: 0,
        reason: format!("read of {len} bytes at byte {offset}: {e}"),
        host: true,
    })?;
    Ok((VIRTIO_BLK_S_OK, u32::try_from(len).unwrap_or(u32::MAX)))
}

fn write(disk: &Disk, sector: u64, bufs: &[VolatileSlice<'_>]) -> Result<(u32, u32), Failure> {
    if disk.readonly {
        return Err(guest_error("write to a read-only disk"));
    }
    let len = total_len(bufs);
    let offset = byte_range(disk, sector, len)?;
    disk.backend.write(bufs, offset).map_err(|e| Failure {
        written: 0,
        reason: format!("write of {len} bytes at byte {offset}: {e}"),
        // A write the guard refused is the guest's doing.
        host: e.kind() != std::io::ErrorKind::PermissionDenied,
    })?;
    Ok((VIRTIO_BLK_S_OK, 0))
}

fn flush(disk: &Disk) -> Result<(u32, u32), Failure> {
    if !disk.readonly {
        disk.backend.flush().map_err(|e| Failure {
            written: 0,
            reason: format!("flush: {e}"),
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
