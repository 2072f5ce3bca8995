//! Tests of [`super::VirtioBlock`], driven through the virtio-pci transport like a guest driver.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::{Bytes, GuestAddress};

use super::*;

mod formats;
mod queues;
use crate::virtio::pci::layout::DEVICE_CFG_OFFSET;
use crate::virtio::test_driver::{pattern, Buf, Driver, TempImage, DATA};

const HEADER: u64 = DATA;
const STATUS: u64 = DATA + 0x100;
const BUFFER: u64 = DATA + 0x1000;
/// A status value the device never writes, to see that it wrote one.
const UNTOUCHED: u8 = 0xaa;

fn config(image: &TempImage, readonly: bool) -> BlockConfig {
    BlockConfig {
        path: image.0.clone(),
        image_type: None,
        backing_files: false,
        num_queues: 1,
        queue_size: QUEUE_SIZE,
        readonly,
        id: Some("disk0".into()),
        serial: None,
    }
}

fn started(image: &TempImage, readonly: bool) -> Driver {
    let blk = VirtioBlock::open(&config(image, readonly)).unwrap();
    let mut d = Driver::new(Box::new(blk));
    d.start();
    d
}

fn header(d: &Driver, request_type: u32, sector: u64) {
    d.mem.write_obj(request_type, GuestAddress(HEADER)).unwrap();
    d.mem.write_obj(0u32, GuestAddress(HEADER + 4)).unwrap();
    d.mem.write_obj(sector, GuestAddress(HEADER + 8)).unwrap();
    d.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
}

fn status_byte(d: &Driver) -> u32 {
    u32::from(d.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap())
}

/// Sends header + one data buffer of `len` bytes (device-writable for reads) + status; returns
/// (status, used length).
fn request(d: &mut Driver, request_type: u32, sector: u64, len: u32, to_guest: bool) -> (u32, u32) {
    header(d, request_type, sector);
    let (_, used) = d.complete(&[
        Buf(HEADER, 16, false),
        Buf(BUFFER, len, to_guest),
        Buf(STATUS, 1, true),
    ]);
    (status_byte(d), used)
}

#[test]
fn read_returns_the_image_bytes_with_status_ok() {
    let image = TempImage::new(&pattern(8));
    let mut d = started(&image, false);
    let (status, used) = request(&mut d, VIRTIO_BLK_T_IN, 2, 1024, true);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    assert_eq!(used, 1024 + 1);
    assert_eq!(d.mem_read(BUFFER, 1024), pattern(8)[1024..2048]);
}

#[test]
fn write_lands_in_the_image_file() {
    let image = TempImage::new(&pattern(8));
    let mut d = started(&image, false);
    d.mem
        .write_slice(&[0x5a; 512], GuestAddress(BUFFER))
        .unwrap();
    let (status, used) = request(&mut d, VIRTIO_BLK_T_OUT, 3, 512, false);
    assert_eq!((status, used), (VIRTIO_BLK_S_OK, 1));
    let mut expected = pattern(8);
    expected[1536..2048].fill(0x5a);
    assert_eq!(image.content(), expected);
}

#[test]
fn flush_completes_with_ok() {
    let image = TempImage::new(&pattern(1));
    let mut d = started(&image, false);
    header(&d, VIRTIO_BLK_T_FLUSH, 0);
    let (_, used) = d.complete(&[Buf(HEADER, 16, false), Buf(STATUS, 1, true)]);
    assert_eq!((status_byte(&d), used), (VIRTIO_BLK_S_OK, 1));
}

#[test]
fn write_to_a_readonly_disk_is_ioerr_and_leaves_the_file_unchanged() {
    let image = TempImage::new(&pattern(4));
    let mut d = started(&image, true);
    assert_ne!(d.device_features() & 1 << VIRTIO_BLK_F_RO, 0);
    d.mem
        .write_slice(&[0x5a; 512], GuestAddress(BUFFER))
        .unwrap();
    let (status, _) = request(&mut d, VIRTIO_BLK_T_OUT, 0, 512, false);
    assert_eq!(status, VIRTIO_BLK_S_IOERR);
    assert_eq!(image.content(), pattern(4));
    // Reads still work.
    let (status, _) = request(&mut d, VIRTIO_BLK_T_IN, 0, 512, true);
    assert_eq!(status, VIRTIO_BLK_S_OK);
}

#[test]
fn get_id_returns_the_serial_nul_padded() {
    let image = TempImage::new(&pattern(1));
    let mut cfg = config(&image, false);
    cfg.serial = Some("VIADUCT-0001".into());
    let mut d = Driver::new(Box::new(VirtioBlock::open(&cfg).unwrap()));
    d.start();
    d.mem
        .write_slice(&[0xff; 20], GuestAddress(BUFFER))
        .unwrap();
    let (status, used) = request(&mut d, VIRTIO_BLK_T_GET_ID, 0, 20, true);
    assert_eq!((status, used), (VIRTIO_BLK_S_OK, 21));
    let mut expected = b"VIADUCT-0001".to_vec();
    expected.resize(20, 0);
    assert_eq!(d.mem_read(BUFFER, 20), expected);
}

#[test]
fn id_is_the_serial_when_none_is_given() {
    let image = TempImage::new(&pattern(1));
    let mut d = started(&image, false);
    let (status, _) = request(&mut d, VIRTIO_BLK_T_GET_ID, 0, 20, true);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    assert_eq!(&d.mem_read(BUFFER, 6), b"disk0\0");
}

#[test]
fn read_past_the_end_is_ioerr() {
    let image = TempImage::new(&pattern(4));
    let mut d = started(&image, false);
    let (status, used) = request(&mut d, VIRTIO_BLK_T_IN, 3, 1024, true);
    assert_eq!((status, used), (VIRTIO_BLK_S_IOERR, 1));
    let (status, _) = request(&mut d, VIRTIO_BLK_T_IN, u64::MAX / 2, 512, true);
    assert_eq!(status, VIRTIO_BLK_S_IOERR);
    // The last sector itself is readable.
    let (status, _) = request(&mut d, VIRTIO_BLK_T_IN, 3, 512, true);
    assert_eq!(status, VIRTIO_BLK_S_OK);
}

#[test]
fn data_that_is_not_whole_sectors_is_ioerr() {
    let image = TempImage::new(&pattern(4));
    let mut d = started(&image, false);
    let (status, _) = request(&mut d, VIRTIO_BLK_T_IN, 0, 100, true);
    assert_eq!(status, VIRTIO_BLK_S_IOERR);
}

#[test]
fn unknown_request_type_is_unsupp() {
    let image = TempImage::new(&pattern(1));
    let mut d = started(&image, false);
    header(&d, 11 /* DISCARD, not offered */, 0);
    d.complete(&[Buf(HEADER, 16, false), Buf(STATUS, 1, true)]);
    assert_eq!(status_byte(&d), VIRTIO_BLK_S_UNSUPP);
}

#[test]
fn malformed_chains_are_completed_without_panicking() {
    let image = TempImage::new(&pattern(4));
    let mut d = started(&image, false);
    // No writable status descriptor: returned unanswered.
    header(&d, VIRTIO_BLK_T_IN, 0);
    let (_, used) = d.complete(&[Buf(HEADER, 16, false), Buf(BUFFER, 512, false)]);
    assert_eq!((used, status_byte(&d)), (0, u32::from(UNTOUCHED)));
    // Header shorter than 16 bytes: IOERR.
    header(&d, VIRTIO_BLK_T_IN, 0);
    let (_, used) = d.complete(&[Buf(HEADER, 8, false), Buf(STATUS, 1, true)]);
    assert_eq!((used, status_byte(&d)), (1, VIRTIO_BLK_S_IOERR));
    // A readable buffer after a writable one: IOERR.
    header(&d, VIRTIO_BLK_T_IN, 0);
    d.complete(&[
        Buf(HEADER, 16, false),
        Buf(BUFFER, 512, true),
        Buf(BUFFER + 512, 512, false),
        Buf(STATUS, 1, true),
    ]);
    assert_eq!(status_byte(&d), VIRTIO_BLK_S_IOERR);
    // A data buffer outside guest memory: IOERR.
    header(&d, VIRTIO_BLK_T_IN, 0);
    d.complete(&[
        Buf(HEADER, 16, false),
        Buf(1 << 40, 512, true),
        Buf(STATUS, 1, true),
    ]);
    assert_eq!(status_byte(&d), VIRTIO_BLK_S_IOERR);
    // The device still serves good requests.
    let (status, _) = request(&mut d, VIRTIO_BLK_T_IN, 0, 512, true);
    assert_eq!(status, VIRTIO_BLK_S_OK);
}

#[test]
fn device_config_reports_capacity_blk_size_and_seg_max() {
    let image = TempImage::new(&pattern(24));
    let mut d = started(&image, false);
    let cfg = |d: &mut Driver, at: usize, len| d.read(DEVICE_CFG_OFFSET + at as u64, len);
    assert_eq!(cfg(&mut d, config_offset::CAPACITY, 8), 24);
    assert_eq!(cfg(&mut d, config_offset::CAPACITY, 4), 24);
    assert_eq!(cfg(&mut d, config_offset::BLK_SIZE, 4), 512);
    assert_eq!(cfg(&mut d, config_offset::SEG_MAX, 4), 254);
    assert_eq!(cfg(&mut d, config_offset::NUM_QUEUES, 2), 1);
    assert_eq!(cfg(&mut d, 0x100, 4), 0);
    let f = d.device_features();
    for bit in [
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
    ] {
        assert_ne!(f & 1 << bit, 0, "feature {bit}");
    }
    assert_eq!(f & 1 << VIRTIO_BLK_F_RO, 0);
    assert_eq!(f & features::RING_EVENT_IDX, 0);
}

#[test]
fn open_errors_name_the_disk() {
    let image = TempImage::new(&pattern(1));
    let mut cfg = config(&image, false);
    cfg.serial = Some("x".repeat(21));
    let e = VirtioBlock::open(&cfg).err().unwrap();
    assert!(matches!(e, BlockError::SerialTooLong { len: 21, .. }));
    assert!(e.to_string().starts_with("disk disk0:"), "{e}");

    let missing = BlockConfig {
        path: image.0.with_extension("missing"),
        id: None,
        ..config(&image, false)
    };
    let e = VirtioBlock::open(&missing).err().unwrap();
    assert!(e.to_string().contains(".missing"), "{e}");

    let tiny = TempImage::new(&[0; 100]);
    let e = VirtioBlock::open(&config(&tiny, true)).err().unwrap();
    assert!(matches!(e, BlockError::TooSmall { bytes: 100, .. }));
}

#[test]
fn an_image_in_use_by_another_writer_is_refused() {
    let image = TempImage::new(&pattern(1));
    let first = VirtioBlock::open(&config(&image, false)).unwrap();
    let e = VirtioBlock::open(&config(&image, false)).err().unwrap();
    assert!(matches!(e, BlockError::Locked { .. }), "{e}");
    assert!(VirtioBlock::open(&config(&image, true)).is_err());
    drop(first);
    let _ro1 = VirtioBlock::open(&config(&image, true)).unwrap();
    let _ro2 = VirtioBlock::open(&config(&image, true)).unwrap();
}
