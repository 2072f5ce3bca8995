//! Image formats end to end: qcow2 images (made with imago) read and written through the
//! device, backing chains, refusals, and the guard on disks whose format was guessed.

use std::path::Path;

use imago::qcow2::Qcow2;
use imago::{
    DenyImplicitOpenGate, FormatAccess, FormatCreateBuilder, FormatDriverBuilder,
    StorageOpenOptions,
};

use super::*;

fn storage(path: &Path, write: bool) -> imago::file::File {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .unwrap();
    let opts = StorageOpenOptions::new().filename(path).write(write);
    imago::file::File::from_open_file(file, opts).unwrap()
}

/// A qcow2 image of `content.len()` bytes holding `content`, optionally on top of `backing`
/// (a qcow2 file name relative to the image), in which case `content` is written over it.
fn qcow2(content: &[u8], size: u64, backing: Option<&str>) -> TempImage {
    let image = TempImage::new(&[]);
    qcow2_at(&image, content, size, backing);
    image
}

fn qcow2_at(image: &TempImage, content: &[u8], size: u64, backing: Option<&str>) {
    let mut create = Qcow2::<imago::file::File>::create_builder(storage(&image.0, true))
        .size(size)
        .cluster_size(4096);
    if let Some(b) = backing {
        create = create.backing(b.to_string(), "qcow2".to_string());
    }
    create.create().unwrap();
    if !content.is_empty() {
        let gate = imago::PermissiveImplicitOpenGate::default();
        let q = Qcow2::<imago::file::File>::builder(storage(&image.0, true))
            .write(true)
            .open(gate)
            .unwrap();
        let q = FormatAccess::new(q);
        q.write(content, 0).unwrap();
        q.flush().unwrap();
    }
}

/// What imago reads from the qcow2 `image` (without following a backing file).
fn qcow2_content(image: &TempImage, len: usize) -> Vec<u8> {
    let q = Qcow2::<imago::file::File>::builder(storage(&image.0, false))
        .backing(None)
        .open(DenyImplicitOpenGate::default())
        .unwrap();
    let mut buf = vec![0u8; len];
    FormatAccess::new(q).read(&mut buf[..], 0).unwrap();
    buf
}

/// The error and its sources, one line, as the CLI prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line = format!("{line}: {s}");
        source = s.source();
    }
    line
}

fn open_with(cfg: &BlockConfig) -> Result<Driver, String> {
    let blk = VirtioBlock::open(cfg).map_err(|e| chain(&e))?;
    let mut d = Driver::new(Box::new(blk));
    d.start();
    Ok(d)
}

#[test]
fn a_qcow2_image_is_detected_and_served_as_qcow2() {
    let image = qcow2(&pattern(8), 8 * 512, None);
    let blk = VirtioBlock::open(&config(&image, false)).unwrap();
    assert_eq!(
        blk.opened_as(),
        OpenedAs {
            image_type: ImageType::Qcow2,
            guessed: true
        }
    );
    // The guest sees the virtual size, not the file's.
    assert_eq!(blk.capacity_sectors(), 8);
    let mut d = Driver::new(Box::new(blk));
    d.start();
    let (status, _) = request(&mut d, VIRTIO_BLK_T_IN, 2, 1024, true);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    assert_eq!(d.mem_read(BUFFER, 1024), pattern(8)[1024..2048]);
}

#[test]
fn a_write_to_a_qcow2_image_goes_through_its_metadata() {
    let image = qcow2(&pattern(8), 8 * 512, None);
    let header_before = std::fs::read(&image.0).unwrap()[..72].to_vec();
    let mut d = open_with(&config(&image, false)).unwrap();
    d.mem
        .write_slice(&[0x5a; 1024], GuestAddress(BUFFER))
        .unwrap();
    let (status, _) = request(&mut d, VIRTIO_BLK_T_OUT, 0, 1024, false);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    header(&d, VIRTIO_BLK_T_FLUSH, 0);
    d.complete(&[Buf(HEADER, 16, false), Buf(STATUS, 1, true)]);
    assert_eq!(status_byte(&d), VIRTIO_BLK_S_OK);
    drop(d);
    // Guest sector 0 is not file byte 0: the header is intact and imago reads the new data.
    assert_eq!(std::fs::read(&image.0).unwrap()[..72], header_before);
    let mut expected = pattern(8);
    expected[..1024].fill(0x5a);
    assert_eq!(qcow2_content(&image, 8 * 512), expected);
}

#[test]
fn an_overlay_reads_its_backing_file_and_keeps_writes_to_itself() {
    let base = qcow2(&pattern(8), 8 * 512, None);
    let base_bytes = base.content();
    let name = base.0.file_name().unwrap().to_str().unwrap();
    let overlay = qcow2(&[], 8 * 512, Some(name));
    let cfg = BlockConfig {
        image_type: Some(ImageType::Qcow2),
        backing_files: true,
        ..config(&overlay, false)
    };
    let mut d = open_with(&cfg).unwrap();
    let (status, _) = request(&mut d, VIRTIO_BLK_T_IN, 0, 4096, true);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    assert_eq!(d.mem_read(BUFFER, 4096), pattern(8)[..4096]);
    d.mem
        .write_slice(&[0xa5; 512], GuestAddress(BUFFER))
        .unwrap();
    let (status, _) = request(&mut d, VIRTIO_BLK_T_OUT, 1, 512, false);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    let (status, _) = request(&mut d, VIRTIO_BLK_T_IN, 0, 2048, true);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    let mut expected = pattern(8)[..2048].to_vec();
    expected[512..1024].fill(0xa5);
    assert_eq!(d.mem_read(BUFFER, 2048), expected);
    drop(d);
    assert_eq!(base.content(), base_bytes, "the backing file was written");
}

#[test]
fn backing_files_are_followed_only_when_asked_and_the_format_is_given() {
    let base = qcow2(&pattern(4), 4 * 512, None);
    let name = base.0.file_name().unwrap().to_str().unwrap();
    let overlay = qcow2(&[], 4 * 512, Some(name));
    let e = open_with(&config(&overlay, false)).err().unwrap();
    assert!(
        e.contains(&format!("has the backing file \"{name}\"")),
        "{e}"
    );
    assert!(e.contains("give backing_files=on"), "{e}");
    // Guessed qcow2 never follows one, even with backing_files=on.
    let guessed = BlockConfig {
        backing_files: true,
        ..config(&overlay, false)
    };
    assert!(open_with(&guessed).is_err());
}

#[test]
fn a_backing_loop_is_refused_not_followed_forever() {
    // The image is its own backing file.
    let image = TempImage::new(&[]);
    let name = image.0.file_name().unwrap().to_str().unwrap().to_string();
    qcow2_at(&image, &[], 4 * 512, Some(&name));
    let cfg = BlockConfig {
        image_type: Some(ImageType::Qcow2),
        backing_files: true,
        readonly: true,
        ..config(&image, true)
    };
    // A file cannot be locked twice, so imago's reopen is read-only and unlocked: it opens,
    // and the chain ends at the depth limit.
    let e = open_with(&cfg).err().unwrap();
    assert!(e.contains("longer than 10 images"), "{e}");
}

#[test]
fn a_readonly_qcow2_image_refuses_writes_and_stays_unchanged() {
    let image = qcow2(&pattern(4), 4 * 512, None);
    let before = image.content();
    let mut d = open_with(&config(&image, true)).unwrap();
    assert_ne!(d.device_features() & 1 << VIRTIO_BLK_F_RO, 0);
    let (status, _) = request(&mut d, VIRTIO_BLK_T_OUT, 0, 512, false);
    assert_eq!(status, VIRTIO_BLK_S_IOERR);
    let (status, _) = request(&mut d, VIRTIO_BLK_T_IN, 0, 512, true);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    drop(d);
    assert_eq!(image.content(), before);
}

fn with_header(magic: &[u8], at: usize) -> TempImage {
    let mut content = vec![0u8; 8 * 512];
    content[at..at + magic.len()].copy_from_slice(magic);
    TempImage::new(&content)
}

#[test]
fn formats_viaduct_cannot_serve_are_refused_never_served_as_raw() {
    for (magic, name) in [
        (&b"vhdxfile"[..], "VHDX"),
        (b"conectix", "VHD (dynamic)"),
        (b"KDMV", "VMDK (sparse)"),
        (b"QED\0", "QED"),
        (b"LUKS\xba\xbe", "LUKS"),
        (b"QFI\xfb\0\0\0\x01", "qcow (version 1)"),
    ] {
        let image = with_header(magic, 0);
        let e = open_with(&config(&image, false)).err().unwrap();
        assert!(
            e.contains(&format!("is a {name} image, which viaduct cannot serve")),
            "{name}: {e}"
        );
        // image_type=raw is the user's word: the bytes are served as they are.
        let raw = BlockConfig {
            image_type: Some(ImageType::Raw),
            ..config(&image, false)
        };
        open_with(&raw).unwrap();
    }
    let fixed_vhd = with_header(b"conectix", 7 * 512);
    let e = open_with(&config(&fixed_vhd, false)).err().unwrap();
    assert!(e.contains("VHD (fixed)"), "{e}");
}

#[test]
fn encrypted_and_zstd_qcow2_images_are_refused() {
    let image = qcow2(&[], 4 * 512, None);
    let mut bytes = image.content();
    bytes[32..36].copy_from_slice(&2u32.to_be_bytes());
    std::fs::write(&image.0, &bytes).unwrap();
    let e = open_with(&config(&image, false)).err().unwrap();
    assert!(e.contains("is encrypted (LUKS)"), "{e}");
    bytes[32..36].copy_from_slice(&0u32.to_be_bytes());
    bytes[72..80].copy_from_slice(&format::qcow2_incompatible::COMPRESSION_TYPE.to_be_bytes());
    std::fs::write(&image.0, &bytes).unwrap();
    let e = open_with(&config(&image, false)).err().unwrap();
    assert!(e.contains("zstd"), "{e}");
}

#[test]
fn image_type_qcow2_on_a_raw_file_is_refused() {
    let image = TempImage::new(&pattern(4));
    let cfg = BlockConfig {
        image_type: Some(ImageType::Qcow2),
        ..config(&image, false)
    };
    let e = open_with(&cfg).err().unwrap();
    assert!(e.contains("is not a qcow2 image"), "{e}");
}

/// A qcow2 header a guest might write at sector 0 of its raw disk.
fn planted_header() -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..4].copy_from_slice(&format::QCOW_MAGIC);
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h
}

#[test]
fn a_guessed_raw_disk_refuses_a_planted_image_header_at_byte_0() {
    let image = TempImage::new(&pattern(4));
    let mut d = started(&image, false);
    d.mem
        .write_slice(&planted_header(), GuestAddress(BUFFER))
        .unwrap();
    let (status, _) = request(&mut d, VIRTIO_BLK_T_OUT, 0, 512, false);
    assert_eq!(status, VIRTIO_BLK_S_IOERR);
    assert_eq!(image.content(), pattern(4));
    // The same bytes elsewhere, and an ordinary boot sector at byte 0, are written.
    let (status, _) = request(&mut d, VIRTIO_BLK_T_OUT, 1, 512, false);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    d.mem
        .write_slice(&[0xeb; 1024], GuestAddress(BUFFER))
        .unwrap();
    let (status, _) = request(&mut d, VIRTIO_BLK_T_OUT, 0, 1024, false);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    let content = image.content();
    assert_eq!(content[..1024], [0xeb; 1024]);
    assert_eq!(content[1024..2048], pattern(4)[1024..2048]);
}

#[test]
fn an_explicit_raw_disk_takes_any_bytes_at_byte_0() {
    let image = TempImage::new(&pattern(4));
    let cfg = BlockConfig {
        image_type: Some(ImageType::Raw),
        ..config(&image, false)
    };
    let mut d = open_with(&cfg).unwrap();
    d.mem
        .write_slice(&planted_header(), GuestAddress(BUFFER))
        .unwrap();
    let (status, _) = request(&mut d, VIRTIO_BLK_T_OUT, 0, 512, false);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    assert_eq!(image.content()[..512], planted_header());
}

#[test]
fn data_split_over_many_descriptors_lands_in_order() {
    let image = TempImage::new(&pattern(8));
    let mut d = started(&image, false);
    // Read 4 sectors into 3 uneven buffers, then write them back shifted by 2 sectors.
    header(&d, VIRTIO_BLK_T_IN, 1);
    d.complete(&[
        Buf(HEADER, 16, false),
        Buf(BUFFER, 100, true),
        Buf(BUFFER + 0x1000, 1500, true),
        Buf(BUFFER + 0x2000, 448, true),
        Buf(STATUS, 1, true),
    ]);
    assert_eq!(status_byte(&d), VIRTIO_BLK_S_OK);
    let mut got = d.mem_read(BUFFER, 100);
    got.extend(d.mem_read(BUFFER + 0x1000, 1500));
    got.extend(d.mem_read(BUFFER + 0x2000, 448));
    assert_eq!(got, pattern(8)[512..2560]);
    header(&d, VIRTIO_BLK_T_OUT, 3);
    d.complete(&[
        Buf(HEADER, 16, false),
        Buf(BUFFER, 100, false),
        Buf(BUFFER + 0x1000, 1500, false),
        Buf(BUFFER + 0x2000, 448, false),
        Buf(STATUS, 1, true),
    ]);
    assert_eq!(status_byte(&d), VIRTIO_BLK_S_OK);
    assert_eq!(image.content()[1536..3584], pattern(8)[512..2560]);
}

/// An image the `qcow2_image` fuzz target made: a v3 qcow2 header followed by a feature name
/// table extension whose length is not a whole number of 48-byte entries. imago 0.2.6 panics
/// parsing it (`qcow2/metadata.rs`, slicing past the short last entry); viaduct must refuse it.
const DAMAGED_FEATURE_TABLE: &[u8] = include_bytes!("damaged-feature-table.qcow2");

#[test]
fn a_damaged_feature_name_table_is_refused_not_handed_to_imago() {
    let image = TempImage::new(DAMAGED_FEATURE_TABLE);
    for image_type in [None, Some(ImageType::Qcow2)] {
        let cfg = BlockConfig {
            image_type,
            ..config(&image, false)
        };
        let e = open_with(&cfg).err().unwrap();
        assert!(e.contains("feature name table"), "{e}");
        assert!(e.contains("qemu-img"), "{e}");
    }
}

#[test]
fn a_backing_file_with_a_damaged_feature_name_table_is_refused() {
    let backing = TempImage::new(DAMAGED_FEATURE_TABLE);
    let name = backing.0.file_name().unwrap().to_str().unwrap().to_string();
    let top = TempImage::new(&[]);
    qcow2_at(&top, &[], 4 * 512, Some(&name));
    let cfg = BlockConfig {
        image_type: Some(ImageType::Qcow2),
        backing_files: true,
        readonly: true,
        ..config(&top, true)
    };
    let e = open_with(&cfg).err().unwrap();
    assert!(
        e.contains("backing file") && e.contains("feature name table"),
        "{e}"
    );
}
