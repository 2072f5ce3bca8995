//! Guest RAM DMA-mapped on a thread of its own while the guest boots.
//!
//! Pinning and IOMMU-mapping guest RAM is most of a passthrough start (the kernel faults in and
//! zeroes every page it pins). Nothing needs it before a device DMAs, and a PCI function cannot
//! DMA (or send an MSI) before the guest turns bus mastering on in its command register, which
//! a driver does only when it probes the device, well into the guest's boot. So the cold-plugged
//! devices are attached with the [`RamDmaMap`]'s gate, the mapping runs beside the booting
//! guest, and the first write that turns bus mastering on waits for it (see
//! `vfio_dev::device::DmaReady`). A failed mapping stops the VM; the devices never get bus
//! mastering.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use log::info;
use vfio_dev::device::DmaReady;

/// Where the mapping is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum MapState {
    /// Not started, or running.
    Mapping,
    /// Guest RAM is mapped: devices may DMA.
    Mapped,
    /// It failed (why): no device gets bus mastering.
    Failed(String),
}

/// The shared state the devices' gate and the mapping thread meet at.
struct Gate {
    state: Mutex<MapState>,
    settled: Condvar,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, MapState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn settle(&self, to: MapState) {
        *self.lock() = to;
        self.settled.notify_all();
    }
}

impl DmaReady for Gate {
    fn wait_for_dma(&self, device: &str) -> Result<(), String> {
        let mut state = self.lock();
        if *state == MapState::Mapping {
            info!(
                "{device}: the guest turns bus mastering on before guest RAM is DMA-mapped; \
                 holding it until the mapping is done"
            );
            let waited = Instant::now();
            while *state == MapState::Mapping {
                state = self.settled.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            info!(
                "{device}: bus mastering on, after {:?} waiting for the DMA map",
                waited.elapsed()
            );
        }
        match &*state {
            MapState::Mapped => Ok(()),
            MapState::Failed(why) => Err(format!("guest RAM could not be DMA-mapped: {why}")),
            MapState::Mapping => unreachable!("the loop above waits until it settles"),
        }
    }
}

/// Fails the gate if the mapping thread unwinds before settling it.
struct SettleOnPanic(Arc<Gate>);

impl Drop for SettleOnPanic {
    fn drop(&mut self) {
        if *self.0.lock() == MapState::Mapping {
            self.0
                .settle(MapState::Failed("its thread panicked".to_string()));
        }
    }
}

/// One DMA mapping of guest RAM run on a thread of its own (see the module docs): created
/// before the devices are attached (they get [`RamDmaMap::gate`]), started once they are.
pub(crate) struct RamDmaMap {
    gate: Arc<Gate>,
    thread: Mutex<Option<JoinHandle<Result<(), String>>>>,
}

impl RamDmaMap {
    /// A mapping not started yet: its gate holds bus mastering until it has run.
    pub(crate) fn new() -> Self {
        Self {
            gate: Arc::new(Gate {
                state: Mutex::new(MapState::Mapping),
                settled: Condvar::new(),
            }),
            thread: Mutex::new(None),
        }
    }

    /// What a device waits at before it gets bus mastering.
    pub(crate) fn gate(&self) -> Arc<dyn DmaReady> {
        self.gate.clone()
    }

    /// Runs `map` on a thread named `dma-map`; its result settles the gate. `Err` (and the
    /// gate failed) when the thread cannot be started.
    pub(crate) fn start(
        &self,
        map: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> std::io::Result<()> {
        let gate = self.gate.clone();
        let spawned = std::thread::Builder::new()
            .name("dma-map".to_string())
            .spawn(move || {
                // A panic in `map` must not leave a vCPU waiting at the gate.
                let _guard = SettleOnPanic(gate.clone());
                let result = map();
                gate.settle(match &result {
                    Ok(()) => MapState::Mapped,
                    Err(why) => MapState::Failed(why.clone()),
                });
                result
            });
        match spawned {
            Ok(handle) => {
                *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
                Ok(())
            }
            Err(e) => {
                self.gate
                    .settle(MapState::Failed(format!("cannot start its thread: {e}")));
                Err(e)
            }
        }
    }

    /// Waits for the mapping to end and says how it went: `Ok` when guest RAM is mapped. A
    /// mapping never started counts as failed. Later calls return the same answer.
    pub(crate) fn finish(&self) -> Result<(), String> {
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                self.gate
                    .settle(MapState::Failed("its thread panicked".to_string()));
            }
        }
        match &*self.gate.lock() {
            MapState::Mapped => Ok(()),
            MapState::Failed(why) => Err(why.clone()),
            MapState::Mapping => Err("it was never started".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_device_waits_until_the_mapping_is_done() {
        let map = RamDmaMap::new();
        let gate = map.gate();
        let (go, release) = mpsc::channel::<()>();
        map.start(move || {
            release.recv().unwrap();
            Ok(())
        })
        .unwrap();
        let waiter = std::thread::spawn(move || gate.wait_for_dma("dev"));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !waiter.is_finished(),
            "bus mastering before the map was done"
        );
        go.send(()).unwrap();
        assert_eq!(waiter.join().unwrap(), Ok(()));
        assert_eq!(map.finish(), Ok(()));
        // Once mapped, the gate answers at once, and so does finish.
        assert_eq!(map.gate().wait_for_dma("dev"), Ok(()));
        assert_eq!(map.finish(), Ok(()));
    }

    #[test]
    fn a_failed_mapping_refuses_every_device() {
        let map = RamDmaMap::new();
        map.start(|| Err("ENOMEM".to_string())).unwrap();
        assert_eq!(map.finish(), Err("ENOMEM".to_string()));
        let answer = map.gate().wait_for_dma("dev").unwrap_err();
        assert!(answer.contains("ENOMEM"), "{answer}");
    }

    #[test]
    fn a_panicking_mapping_counts_as_failed() {
        let map = RamDmaMap::new();
        map.start(|| panic!("boom")).unwrap();
        assert_eq!(map.finish(), Err("its thread panicked".to_string()));
        assert!(map.gate().wait_for_dma("dev").is_err());
    }

    #[test]
    fn a_mapping_never_started_is_not_mapped() {
        let map = RamDmaMap::new();
        assert!(map.finish().is_err());
    }
}
