//! The NVIDIA GPUDirect P2P clique capability: an 8-byte vendor-specific capability that tells
//! the guest's NVIDIA driver which GPUs may do peer-to-peer DMA with each other.
//!
//! Byte for byte QEMU's layout (`09 00 08 'P' '2' 'P' (id << 3) 00`). Unlike cloud-hypervisor,
//! which hard-codes 0xD4 without checking, viaduct places it in standard config space that no
//! capability of the device uses and that reads as zeros, preferring 0xD4 (where recent GPUs
//! leave room for it), then 0xC8 (older GPUs), then any other dword-aligned free block.

use pci::capability::{id, Capability, FIRST_CAPABILITY_OFFSET, LEGACY_CONFIG_SIZE};

/// Length of the clique capability.
pub const CLIQUE_CAP_LEN: usize = 8;
/// Largest clique id: the field is 4 bits (bits 6:3 of the signature's upper half).
pub const MAX_CLIQUE_ID: u8 = 15;
/// Offsets tried first, in order.
pub const PREFERRED_OFFSETS: [usize; 2] = [0xd4, 0xc8];

/// The capability's bytes for clique `clique` (0..=15), with a null next pointer.
pub fn clique_capability(clique: u8) -> [u8; CLIQUE_CAP_LEN] {
    [
        id::VENDOR_SPECIFIC,
        0,
        CLIQUE_CAP_LEN as u8,
        b'P',
        b'2',
        b'P',
        (clique & MAX_CLIQUE_ID) << 3,
        0,
    ]
}

/// The config-space bytes `[start, end)` that capability `cap` occupies in `config`.
///
/// Sizes by id: power management 8; MSI 10/14/20/24 by its 64-bit and per-vector-mask bits;
/// MSI-X 12; PCI Express 0x3C (0x24 for a version 1 capability); vendor-specific by its length
/// byte; VPD and Subsystem IDs 8; Advanced Features 6. Any other id is assumed to run up to the
/// next capability above it (or to 0x100): conservative, since it may waste free space but never
/// overlaps a structure whose size viaduct does not know.
pub fn capability_extent(config: &[u8], cap: Capability, all: &[Capability]) -> (usize, usize) {
    let start = usize::from(cap.offset);
    let byte = |off: usize| config.get(start + off).copied().unwrap_or(0);
    let len = match cap.id {
        id::POWER_MANAGEMENT => 8,
        id::MSI => {
            let control = u16::from_le_bytes([byte(2), byte(3)]);
            let addr64 = control & (1 << 7) != 0;
            let per_vector_mask = control & (1 << 8) != 0;
            10 + if addr64 { 4 } else { 0 } + if per_vector_mask { 10 } else { 0 }
        }
        id::MSIX => 12,
        id::PCI_EXPRESS if byte(2) & 0xf == 1 => 0x24,
        id::PCI_EXPRESS => 0x3c,
        id::VENDOR_SPECIFIC => usize::from(byte(2)).max(3),
        VPD | SUBSYSTEM_IDS => 8,
        ADVANCED_FEATURES => 6,
        _ => {
            let next_above = all
                .iter()
                .map(|c| usize::from(c.offset))
                .filter(|&o| o > start)
                .min()
                .unwrap_or(LEGACY_CONFIG_SIZE);
            next_above - start
        }
    };
    (start, (start + len).min(LEGACY_CONFIG_SIZE))
}

/// Vital Product Data.
const VPD: u8 = 0x03;
/// Subsystem vendor/device IDs (bridges).
const SUBSYSTEM_IDS: u8 = 0x0d;
/// Advanced Features (conventional PCI FLR).
const ADVANCED_FEATURES: u8 = 0x13;

/// Where to put the clique capability in `config` (the device's own bytes, at least 256), given
/// its capability list `caps`: the first of 0xD4, 0xC8, then 0x40, 0x44, ... 0xF8 whose 8 bytes
/// lie outside every capability and read as zero. `None` when there is no room.
pub fn find_free_offset(config: &[u8], caps: &[Capability]) -> Option<u8> {
    let extents: Vec<(usize, usize)> = caps
        .iter()
        .map(|&c| capability_extent(config, c, caps))
        .collect();
    let fits = |at: usize| {
        let end = at + CLIQUE_CAP_LEN;
        end <= LEGACY_CONFIG_SIZE
            && extents.iter().all(|&(s, e)| end <= s || at >= e)
            && config
                .get(at..end)
                .is_some_and(|b| b.iter().all(|&x| x == 0))
    };
    let scan = (FIRST_CAPABILITY_OFFSET..=LEGACY_CONFIG_SIZE - CLIQUE_CAP_LEN).step_by(4);
    PREFERRED_OFFSETS
        .into_iter()
        .chain(scan)
        .find(|&at| fits(at))
        .map(|at| at as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pci::capability::Capabilities;

    fn config_with(caps: &[(u8, u8, &[u8])]) -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[0x34] = caps.first().map_or(0, |c| c.0);
        for (i, &(off, cap_id, body)) in caps.iter().enumerate() {
            let off = usize::from(off);
            c[off] = cap_id;
            c[off + 1] = caps.get(i + 1).map_or(0, |n| n.0);
            c[off + 2..off + 2 + body.len()].copy_from_slice(body);
        }
        c
    }

    fn caps_of(c: &[u8]) -> Vec<Capability> {
        Capabilities::new(c).collect()
    }

    #[test]
    fn capability_bytes_match_qemus_layout() {
        assert_eq!(
            clique_capability(3),
            [0x09, 0x00, 0x08, 0x50, 0x32, 0x50, 0x18, 0x00]
        );
        assert_eq!(clique_capability(15)[6], 0x78);
    }

    #[test]
    fn extents_follow_capability_kinds() {
        // MSI with 64-bit addresses and per-vector masks: 24 bytes.
        let c = config_with(&[
            (0x50, id::MSI, &[0x80, 0x01]),
            (0x70, id::PCI_EXPRESS, &[2]),
        ]);
        let caps = caps_of(&c);
        assert_eq!(capability_extent(&c, caps[0], &caps), (0x50, 0x68));
        assert_eq!(capability_extent(&c, caps[1], &caps), (0x70, 0xac));
        // Vendor-specific: its length byte; unknown id: up to the next capability.
        let c = config_with(&[(0x40, 0x42, &[]), (0x60, id::VENDOR_SPECIFIC, &[0x14])]);
        let caps = caps_of(&c);
        assert_eq!(capability_extent(&c, caps[0], &caps), (0x40, 0x60));
        assert_eq!(capability_extent(&c, caps[1], &caps), (0x60, 0x74));
    }

    #[test]
    fn prefers_d4_then_c8_then_any_free_block() {
        let c = config_with(&[(0x60, id::POWER_MANAGEMENT, &[])]);
        assert_eq!(find_free_offset(&c, &caps_of(&c)), Some(0xd4));
        let c = config_with(&[(0xd0, id::VENDOR_SPECIFIC, &[8])]);
        assert_eq!(find_free_offset(&c, &caps_of(&c)), Some(0xc8));
        let c = config_with(&[(0xc4, id::PCI_EXPRESS, &[2])]);
        assert_eq!(find_free_offset(&c, &caps_of(&c)), Some(0x40));
    }

    #[test]
    fn nonzero_bytes_are_not_free() {
        let mut c = config_with(&[(0x40, id::POWER_MANAGEMENT, &[])]);
        c[0xd9] = 0x5a;
        assert_eq!(find_free_offset(&c, &caps_of(&c)), Some(0xc8));
    }

    #[test]
    fn a_full_capability_area_has_no_room() {
        // One vendor-specific capability covering 0x40..0xff.
        let c = config_with(&[(0x40, id::VENDOR_SPECIFIC, &[0xbf])]);
        assert_eq!(find_free_offset(&c, &caps_of(&c)), None);
    }
}
