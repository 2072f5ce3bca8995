//! What kind of image a disk file holds, from its magic numbers.
//!
//! A raw image has no magic, so "raw" means "none of the formats below was recognised". Formats
//! viaduct cannot serve (VHD, VHDX, VMDK, VDI, QED, LUKS, Parallels, qcow version 1) are named so
//! that the caller can refuse them: serving one of them as raw would hand the guest the format's
//! metadata as disk contents, and a guest write would corrupt the image. The qcow2 header fields
//! that decide whether viaduct can open it (encryption, incompatible features, backing file)
//! are decoded here too, so a refusal can say exactly why. Pure byte logic, no I/O except
//! [`detect_file`], which reads the two places magics live: the start and the last 512 bytes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// qcow and qcow2: "QFI\xfb", big-endian, at offset 0.
pub const QCOW_MAGIC: [u8; 4] = *b"QFI\xfb";
/// Bytes [`detect`] wants from the start of the image (enough for every header it decodes).
pub const HEAD_BYTES: usize = 4096;
/// Bytes of a VHD footer, which a fixed VHD keeps at the end of the file.
pub const VHD_FOOTER_BYTES: usize = 512;

/// Incompatible-feature bits of the qcow2 v3 header (`incompatible_features`, offset 72).
pub mod qcow2_incompatible {
    /// Bit 0: the refcounts may be stale (image not closed cleanly with lazy refcounts).
    pub const DIRTY: u64 = 1 << 0;
    /// Bit 1: the image is marked corrupt.
    pub const CORRUPT: u64 = 1 << 1;
    /// Bit 2: guest data lives in an external data file.
    pub const EXTERNAL_DATA_FILE: u64 = 1 << 2;
    /// Bit 3: compressed clusters use a compression other than zlib (zstd).
    pub const COMPRESSION_TYPE: u64 = 1 << 3;
    /// Bit 4: extended L2 entries (subclusters).
    pub const EXTENDED_L2: u64 = 1 << 4;
}

/// The fields of a qcow2 header that decide whether and how viaduct opens it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qcow2Header {
    /// 2 or 3 (1 is reported as [`Detected::Foreign`]).
    pub version: u32,
    /// 0 none, 1 AES, 2 LUKS.
    pub crypt_method: u32,
    /// v3 `incompatible_features` (0 for v2).
    pub incompatible: u64,
    /// Where the backing file's name is, and how long it is (0 length: no backing file).
    pub backing_name_at: (u64, u32),
    /// A header extension in the first [`HEAD_BYTES`] is malformed in a way imago 0.2.6 does
    /// not check (it panics on a feature name table whose length is not a whole number of
    /// 48-byte entries; found by the `qcow2_image` fuzz target).
    pub damaged_extension: bool,
}

/// Why an image with [`Qcow2Header::damaged_extension`] is refused.
pub const DAMAGED_EXTENSION: &str = "has a damaged header: its feature name table extension is \
    not a whole number of 48-byte entries; see `qemu-img check`, or rebuild it with `qemu-img \
    convert -O qcow2`";

impl Qcow2Header {
    /// Why viaduct (through imago) cannot open this image, if it cannot: encryption and the
    /// incompatible features imago does not implement.
    pub fn unsupported(&self) -> Option<&'static str> {
        use qcow2_incompatible as f;
        match self.crypt_method {
            0 => {}
            1 => return Some("is encrypted (AES); viaduct cannot decrypt qcow2 images"),
            _ => return Some("is encrypted (LUKS); viaduct cannot decrypt qcow2 images"),
        }
        if self.damaged_extension {
            return Some(DAMAGED_EXTENSION);
        }
        if self.incompatible & f::CORRUPT != 0 {
            return Some("is marked corrupt; repair it with `qemu-img check -r all`");
        }
        if self.incompatible & f::COMPRESSION_TYPE != 0 {
            return Some(
                "uses zstd-compressed clusters, which viaduct cannot read; recompress with \
                 `qemu-img convert -O qcow2 -c -o compression_type=zlib` (or without -c)",
            );
        }
        if self.incompatible & f::EXTENDED_L2 != 0 {
            return Some(
                "uses extended L2 entries (subclusters), which viaduct cannot serve; convert it \
                 with `qemu-img convert -O qcow2`",
            );
        }
        None
    }

    /// Whether the header names a backing file.
    pub fn has_backing_file(&self) -> bool {
        self.backing_name_at.1 > 0
    }
}

/// What [`detect`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detected {
    /// No known magic: a raw image (or a format nobody can tell from raw).
    Raw,
    /// qcow2 version 2 or 3.
    Qcow2(Qcow2Header),
    /// A format viaduct cannot serve, by name.
    Foreign(&'static str),
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Header extension type of the feature name table; its entries are 48 bytes each.
const FEATURE_NAME_TABLE: u32 = 0x6803_f857;

/// Whether a header extension found in `head` is malformed (see
/// [`Qcow2Header::damaged_extension`]). The extensions follow the header (72 bytes in v2,
/// `header_length` in v3): type and length (big-endian u32 each), then the data, padded to 8.
fn damaged_extension(head: &[u8], version: u32) -> bool {
    let mut at = match version {
        3 => be32(head, 100).map_or(104, |len| len as usize),
        _ => 72,
    };
    while let (Some(kind), Some(len)) = (be32(head, at), be32(head, at + 4)) {
        if kind == 0 {
            return false;
        }
        if kind == FEATURE_NAME_TABLE && len % 48 != 0 {
            return true;
        }
        at = match at.checked_add(8 + (len as usize).next_multiple_of(8)) {
            Some(next) => next,
            None => return false,
        };
    }
    false
}

/// Classifies an image from its first bytes (`head`, up to [`HEAD_BYTES`]) and its last
/// [`VHD_FOOTER_BYTES`] (`tail`, empty when the file is shorter).
pub fn detect(head: &[u8], tail: &[u8]) -> Detected {
    let starts = |magic: &[u8]| head.starts_with(magic);
    if starts(&QCOW_MAGIC) {
        return match be32(head, 4) {
            Some(version @ (2 | 3)) => Detected::Qcow2(Qcow2Header {
                version,
                crypt_method: be32(head, 32).unwrap_or(0),
                incompatible: if version == 3 {
                    be64(head, 72).unwrap_or(0)
                } else {
                    0
                },
                backing_name_at: (be64(head, 8).unwrap_or(0), be32(head, 16).unwrap_or(0)),
                damaged_extension: damaged_extension(head, version),
            }),
            Some(1) => Detected::Foreign("qcow (version 1)"),
            _ => Detected::Foreign("qcow of an unknown version"),
        };
    }
    let foreign = [
        (&b"vhdxfile"[..], "VHDX"),
        (b"conectix", "VHD (dynamic)"),
        (b"KDMV", "VMDK (sparse)"),
        (b"COWD", "VMDK (ESX sparse)"),
        (b"# Disk DescriptorFile", "VMDK (descriptor)"),
        (b"QED\0", "QED"),
        (b"LUKS\xba\xbe", "LUKS"),
        (b"WithoutFreeSpace", "Parallels"),
        (b"WithouFreSpacExt", "Parallels"),
    ];
    if let Some((_, name)) = foreign.iter().find(|(magic, _)| starts(magic)) {
        return Detected::Foreign(name);
    }
    // VDI: "<<< … >>>" text, then the signature 0xbeda107f (little-endian) at 0x40.
    if head.get(0x40..0x44) == Some(&0xbeda_107f_u32.to_le_bytes()[..]) {
        return Detected::Foreign("VDI");
    }
    if tail.len() == VHD_FOOTER_BYTES && tail.starts_with(b"conectix") {
        return Detected::Foreign("VHD (fixed)");
    }
    Detected::Raw
}

/// Reads the start and end of `file` (`size` bytes long) and classifies it with [`detect`].
pub fn detect_file(file: &File, size: u64) -> io::Result<Detected> {
    let mut head = vec![0u8; HEAD_BYTES.min(usize::try_from(size).unwrap_or(HEAD_BYTES))];
    file.read_exact_at(&mut head, 0)?;
    let mut tail = Vec::new();
    if size >= VHD_FOOTER_BYTES as u64 {
        tail.resize(VHD_FOOTER_BYTES, 0);
        file.read_exact_at(&mut tail, size - VHD_FOOTER_BYTES as u64)?;
    }
    Ok(detect(&head, &tail))
}

/// The backing file name a qcow2 header points at, read from `file` (lossy UTF-8).
pub fn backing_name(file: &File, header: &Qcow2Header) -> io::Result<Option<String>> {
    let (at, len) = header.backing_name_at;
    if len == 0 {
        return Ok(None);
    }
    // qcow2 limits the name to 1023 bytes; a longer one is a broken header.
    let mut name = vec![0u8; len.min(1023) as usize];
    file.read_exact_at(&mut name, at)?;
    Ok(Some(String::from_utf8_lossy(&name).into_owned()))
}

/// Whether `data`, about to be written at byte 0 of a disk whose format was guessed (not
/// given), starts with the magic of a format [`detect`] recognises: such a write would make
/// the next start read the disk as that format (for qcow2: follow a backing file the guest
/// chose), so it is refused.
pub fn plants_a_header(data: &[u8]) -> bool {
    !matches!(detect(data, &[]), Detected::Raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2(version: u32) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(&QCOW_MAGIC);
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h
    }

    #[test]
    fn qcow2_headers_are_decoded() {
        let mut h = qcow2(3);
        h[8..16].copy_from_slice(&0x200u64.to_be_bytes());
        h[16..20].copy_from_slice(&9u32.to_be_bytes());
        h[72..80].copy_from_slice(&qcow2_incompatible::DIRTY.to_be_bytes());
        let Detected::Qcow2(q) = detect(&h, &[]) else {
            panic!("not qcow2")
        };
        assert_eq!(
            q,
            Qcow2Header {
                version: 3,
                crypt_method: 0,
                incompatible: 1,
                backing_name_at: (0x200, 9),
                damaged_extension: false,
            }
        );
        assert!(q.has_backing_file());
        assert_eq!(q.unsupported(), None);
        // v2 has no feature fields: whatever is at 72 is not read as features.
        let mut h = qcow2(2);
        h[72..80].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(detect(&h, &[]), Detected::Qcow2(q) if q.incompatible == 0));
    }

    #[test]
    fn qcow2_images_viaduct_cannot_serve_say_why() {
        let with = |at: usize, bytes: &[u8]| {
            let mut h = qcow2(3);
            h[at..at + bytes.len()].copy_from_slice(bytes);
            match detect(&h, &[]) {
                Detected::Qcow2(q) => q.unsupported(),
                other => panic!("{other:?}"),
            }
        };
        assert!(with(32, &1u32.to_be_bytes())
            .unwrap()
            .contains("encrypted (AES)"));
        assert!(with(32, &2u32.to_be_bytes())
            .unwrap()
            .contains("encrypted (LUKS)"));
        let zstd = qcow2_incompatible::COMPRESSION_TYPE.to_be_bytes();
        assert!(with(72, &zstd).unwrap().contains("zstd"));
        let corrupt = qcow2_incompatible::CORRUPT.to_be_bytes();
        assert!(with(72, &corrupt).unwrap().contains("corrupt"));
        assert_eq!(
            detect(&qcow2(1), &[]),
            Detected::Foreign("qcow (version 1)")
        );
    }

    #[test]
    fn foreign_formats_are_named() {
        let at0 = |magic: &[u8]| {
            let mut h = vec![0u8; 512];
            h[..magic.len()].copy_from_slice(magic);
            detect(&h, &[])
        };
        assert_eq!(at0(b"vhdxfile"), Detected::Foreign("VHDX"));
        assert_eq!(at0(b"conectix"), Detected::Foreign("VHD (dynamic)"));
        assert_eq!(at0(b"KDMV\x01\0\0\0"), Detected::Foreign("VMDK (sparse)"));
        assert_eq!(
            at0(b"# Disk DescriptorFile\nversion=1"),
            Detected::Foreign("VMDK (descriptor)")
        );
        assert_eq!(at0(b"QED\0"), Detected::Foreign("QED"));
        assert_eq!(at0(b"LUKS\xba\xbe\0\x02"), Detected::Foreign("LUKS"));
        let mut vdi = vec![0u8; 512];
        vdi[..4].copy_from_slice(b"<<< ");
        vdi[0x40..0x44].copy_from_slice(&0xbeda_107f_u32.to_le_bytes());
        assert_eq!(detect(&vdi, &[]), Detected::Foreign("VDI"));
        let mut footer = vec![0u8; VHD_FOOTER_BYTES];
        footer[..8].copy_from_slice(b"conectix");
        assert_eq!(detect(&[0; 512], &footer), Detected::Foreign("VHD (fixed)"));
    }

    #[test]
    fn anything_else_is_raw() {
        assert_eq!(detect(&[], &[]), Detected::Raw);
        assert_eq!(detect(&[0; 4096], &[0; 512]), Detected::Raw);
        // An MBR boot sector, a GPT header in sector 1, an ext4 superblock: all raw.
        let mut mbr = vec![0u8; 4096];
        mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
        mbr[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(detect(&mbr, &[]), Detected::Raw);
        // "QFI" without the 0xfb, or the magic not at offset 0.
        assert_eq!(detect(b"QFI\0\0\0\0\x03", &[]), Detected::Raw);
        assert_eq!(detect(b"\0QFI\xfb", &[]), Detected::Raw);
    }

    #[test]
    fn a_planted_header_is_recognised() {
        let mut data = qcow2(3);
        assert!(plants_a_header(&data));
        data[0] = b'q';
        assert!(!plants_a_header(&data));
        assert!(plants_a_header(b"vhdxfile and more"));
        assert!(!plants_a_header(&[0xeb, 0x63, 0x90]));
    }
}
