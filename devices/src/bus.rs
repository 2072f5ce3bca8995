//! Address-range dispatch of port I/O and MMIO exits to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device reachable through a range of port or MMIO addresses.
///
/// `offset` is relative to the start of the range the device was inserted at. Reads must fill
/// all of `data`.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why a device could not be inserted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty.
    #[error("cannot map a device over an empty range at {base:#x}")]
    EmptyRange {
        /// Requested start.
        base: u64,
    },
    /// The range overlaps one already taken.
    #[error("range {base:#x}+{len:#x} overlaps the device already at {existing_base:#x}+{existing_len:#x}")]
    Overlap {
        /// Requested start.
        base: u64,
        /// Requested length.
        len: u64,
        /// Start of the conflicting range.
        existing_base: u64,
        /// Length of the conflicting range.
        existing_len: u64,
    },
}

struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping address ranges, each owned by one device.
///
/// Ranges can be added and removed while vCPUs dispatch through the bus (a guest moving a BAR).
/// Dispatch looks the device up, releases the bus lock, then calls the device, so a device
/// access may itself change the bus (an ECAM write that moves a BAR on the same bus).
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    fn ranges(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Entry>> {
        self.ranges.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Maps `device` at `[base, base + len)`.
    pub fn insert(
        &self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::EmptyRange { base });
        }
        let end = base.saturating_add(len);
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        // The only candidates for overlap: the last range starting below `end`.
        if let Some((&b, e)) = ranges.range(..end).next_back() {
            if b.saturating_add(e.len) > base {
                return Err(BusError::Overlap {
                    base,
                    len,
                    existing_base: b,
                    existing_len: e.len,
                });
            }
        }
        ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// Unmaps the range starting at `base`; returns its length, or `None` if nothing starts there.
    pub fn remove(&self, base: u64) -> Option<u64> {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        ranges.remove(&base).map(|e| e.len)
    }

    fn resolve(&self, addr: u64) -> Option<(u64, Arc<Mutex<dyn BusDevice>>)> {
        let ranges = self.ranges();
        let (&base, entry) = ranges.range(..=addr).next_back()?;
        (addr - base < entry.len).then(|| (addr - base, entry.device.clone()))
    }

    /// Dispatches a read; returns false (leaving `data` untouched) when nothing is mapped there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when nothing is mapped there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_with_relative_offsets() {
        let dev = Arc::new(Mutex::new(Recorder(vec![])));
        let bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(dev.lock().unwrap().0, vec![(0, vec![0x41])]);
        assert!(!bus.read(0x400, &mut b));
        assert!(!bus.read(0x3f7, &mut b));
    }

    #[test]
    fn overlapping_ranges_are_rejected() {
        let bus = Bus::new();
        let d = || Arc::new(Mutex::new(Recorder(vec![]))) as Arc<Mutex<dyn BusDevice>>;
        bus.insert(d(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(d(), 0x10f, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(d(), 0xf0, 0x11),
            Err(BusError::Overlap { .. })
        ));
        assert_eq!(
            bus.insert(d(), 0x100, 0),
            Err(BusError::EmptyRange { base: 0x100 })
        );
        bus.insert(d(), 0x110, 1).unwrap();
        bus.insert(d(), 0xf0, 0x10).unwrap();
    }

    #[test]
    fn removed_ranges_stop_dispatching_and_can_be_reused() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder(vec![])));
        bus.insert(dev.clone(), 0x1000, 0x100).unwrap();
        assert_eq!(bus.remove(0x1000), Some(0x100));
        assert_eq!(bus.remove(0x1000), None);
        assert!(!bus.write(0x1000, &[1]));
        bus.insert(dev.clone(), 0x2000, 0x100).unwrap();
        assert!(bus.write(0x2010, &[1]));
        assert_eq!(dev.lock().unwrap().0, vec![(0x10, vec![1])]);
    }
}
