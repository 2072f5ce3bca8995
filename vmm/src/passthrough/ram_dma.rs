//! Guest RAM DMA-mapped on a thread of its own while the guest boots.
//!
//! Pinning and IOMMU-mapping guest RAM is most of a passthrough start (the kernel faults in and
//! zeroes every page it pins). Nothing needs it before a device DMAs, and a PCI function cannot
//! DMA (or send an MSI) before the guest turns bus mastering on in its command register, which
//! a driver does only when it probes the device, well into the guest's boot. So the cold-plugged
//! devices are attached with the [`RamDmaMap`]'s gate, the mapping runs beside the booting
//! guest, and the first write that turns bus mastering on waits for it (see
//! `vfio_dev::device::DmaReady`). A failed mapping stops the VM; the devices never get bus
//! mastering. A VM that stops while the mapping runs stops it ([`RamDmaMap::stop`]): a vCPU
//! held at the gate is let go (without bus mastering), and the mapping ends at its next piece
//! instead of pinning the rest of guest RAM first.
//!
//! A vCPU held at the gate leaves its CPU idle while the map thread populates guest RAM from
//! the bottom up. A helper ([`RamDmaMap::start_helper`]) waits for that moment and then uses the
//! idle CPUs to populate it from the top down; when the two meet, the map thread pins pages
//! that are all present (see `memory::TwoEnds`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use log::info;
use vfio_dev::device::{DmaReady, NoDma};

/// Where the mapping is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum MapState {
    /// Not started, or running.
    Mapping,
    /// Guest RAM is mapped: devices may DMA.
    Mapped,
    /// It failed (why): no device gets bus mastering.
    Failed(String),
    /// The VM is stopping, so it was given up: no device gets bus mastering.
    Stopped,
}

/// How a mapping ended ([`RamDmaMap::finish`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MapEnd {
    /// Guest RAM is mapped.
    Mapped,
    /// Given up because the VM is stopping; nothing of it is mapped.
    Stopped,
    /// It failed (why), or never started; nothing of it is mapped.
    Failed(String),
}

/// The shared state the devices' gate and the mapping thread meet at.
struct Gate {
    state: Mutex<MapState>,
    /// Told when the state settles and when a vCPU starts waiting.
    settled: Condvar,
    /// vCPUs waiting at the gate now.
    held: AtomicUsize,
    /// Set once the state is no longer [`MapState::Mapping`] (for work that polls it).
    done: AtomicBool,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, MapState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn settle(&self, to: MapState) {
        let mut state = self.lock();
        *state = to;
        self.done.store(true, Ordering::Release);
        self.settled.notify_all();
    }

    /// Waits until a vCPU is held at the gate, and says how many are; `None` once the mapping
    /// has settled without one (or while one was).
    fn wait_for_held(&self) -> Option<usize> {
        let mut state = self.lock();
        loop {
            if *state != MapState::Mapping {
                return None;
            }
            let held = self.held.load(Ordering::Acquire);
            if held > 0 {
                return Some(held);
            }
            state = self.settled.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl DmaReady for Gate {
    fn wait_for_dma(&self, device: &str) -> Result<(), NoDma> {
        let mut state = self.lock();
        if *state == MapState::Mapping {
            info!(
                "{device}: the guest turns bus mastering on before guest RAM is DMA-mapped; \
                 holding it until the mapping is done"
            );
            let waited = Instant::now();
            self.held.fetch_add(1, Ordering::AcqRel);
            self.settled.notify_all();
            while *state == MapState::Mapping {
                state = self.settled.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            self.held.fetch_sub(1, Ordering::AcqRel);
            match &*state {
                MapState::Mapped => info!(
                    "{device}: bus mastering on, after {:?} waiting for the DMA map",
                    waited.elapsed()
                ),
                _ => info!(
                    "{device}: no longer held, after {:?} waiting for the DMA map",
                    waited.elapsed()
                ),
            }
        }
        match &*state {
            MapState::Mapped => Ok(()),
            MapState::Failed(why) => Err(NoDma::MapFailed(why.clone())),
            MapState::Stopped => Err(NoDma::Stopping),
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
    /// Set by [`RamDmaMap::stop`]; the mapping looks at it between pieces.
    stopping: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<Result<(), String>>>>,
    /// The helper of [`RamDmaMap::start_helper`], if one was started.
    helper: Mutex<Option<JoinHandle<()>>>,
}

impl RamDmaMap {
    /// A mapping not started yet: its gate holds bus mastering until it has run.
    pub(crate) fn new() -> Self {
        Self {
            gate: Arc::new(Gate {
                state: Mutex::new(MapState::Mapping),
                settled: Condvar::new(),
                held: AtomicUsize::new(0),
                done: AtomicBool::new(false),
            }),
            stopping: Arc::new(AtomicBool::new(false)),
            thread: Mutex::new(None),
            helper: Mutex::new(None),
        }
    }

    /// What the mapping should look at between pieces of work: set once the VM is stopping.
    pub(crate) fn stopping(&self) -> Arc<AtomicBool> {
        self.stopping.clone()
    }

    /// The VM is stopping: lets go of every vCPU waiting at the gate (their devices stay
    /// without bus mastering) and tells the mapping to end at its next piece. Does not wait
    /// for it ([`RamDmaMap::finish`] does). Nothing changes for a mapping that already ended.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let mut state = self.gate.lock();
        if *state == MapState::Mapping {
            *state = MapState::Stopped;
            self.gate.done.store(true, Ordering::Release);
            self.gate.settled.notify_all();
        }
    }

    /// What a device waits at before it gets bus mastering.
    pub(crate) fn gate(&self) -> Arc<dyn DmaReady> {
        self.gate.clone()
    }

    /// Runs `map` on a thread named `dma-map`; its result settles the gate (an `Err` after
    /// [`RamDmaMap::stop`] counts as stopped). `Err` (and the gate failed) when the thread
    /// cannot be started.
    pub(crate) fn start(
        &self,
        map: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> std::io::Result<()> {
        let (gate, stopping) = (self.gate.clone(), self.stopping.clone());
        let spawned = std::thread::Builder::new()
            .name("dma-map".to_string())
            .spawn(move || {
                // A panic in `map` must not leave a vCPU waiting at the gate.
                let _guard = SettleOnPanic(gate.clone());
                let result = map();
                gate.settle(match &result {
                    Ok(()) => MapState::Mapped,
                    Err(_) if stopping.load(Ordering::Acquire) => MapState::Stopped,
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

    /// Starts a thread named `dma-help` that waits until a vCPU is held at the gate and then
    /// runs `help` with the number held then and a flag that is set once the mapping has
    /// settled (mapped, failed or stopped), which `help` should look at often. When the mapping
    /// settles first, `help` never runs. [`RamDmaMap::finish`] waits for the thread.
    pub(crate) fn start_helper(
        &self,
        help: impl FnOnce(usize, &AtomicBool) + Send + 'static,
    ) -> std::io::Result<()> {
        let gate = self.gate.clone();
        let handle = std::thread::Builder::new()
            .name("dma-help".to_string())
            .spawn(move || {
                if let Some(held) = gate.wait_for_held() {
                    help(held, &gate.done);
                }
            })?;
        *self.helper.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
    }

    /// Waits for the mapping to end and says how it went. A mapping never started counts as
    /// failed (or stopped, after [`RamDmaMap::stop`]). Later calls return the same answer.
    pub(crate) fn finish(&self) -> MapEnd {
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                self.gate
                    .settle(MapState::Failed("its thread panicked".to_string()));
            }
        }
        // The mapping has settled (or never started: then nothing waits at the gate and a
        // stop, which always comes first at the VM's end, has settled it), so the helper is
        // done with guest RAM or about to be.
        let helper = self.helper.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(helper) = helper {
            if helper.join().is_err() {
                log::warn!("the thread helping the DMA map of guest RAM panicked");
            }
        }
        match &*self.gate.lock() {
            MapState::Mapped => MapEnd::Mapped,
            MapState::Stopped => MapEnd::Stopped,
            MapState::Failed(why) => MapEnd::Failed(why.clone()),
            MapState::Mapping => MapEnd::Failed("it was never started".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A started mapping that succeeds once the sender is sent to.
    fn map_done_when_told() -> (RamDmaMap, mpsc::Sender<()>) {
        let map = RamDmaMap::new();
        let (go, release) = mpsc::channel::<()>();
        map.start(move || {
            release.recv().unwrap();
            Ok(())
        })
        .unwrap();
        (map, go)
    }

    #[test]
    fn a_device_waits_until_the_mapping_is_done() {
        let (map, go) = map_done_when_told();
        let gate = map.gate();
        let waiter = std::thread::spawn(move || gate.wait_for_dma("dev"));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !waiter.is_finished(),
            "bus mastering before the map was done"
        );
        go.send(()).unwrap();
        assert_eq!(waiter.join().unwrap(), Ok(()));
        assert_eq!(map.finish(), MapEnd::Mapped);
        // Once mapped, the gate answers at once, and so does finish; a late stop changes
        // nothing.
        map.stop();
        assert_eq!(map.gate().wait_for_dma("dev"), Ok(()));
        assert_eq!(map.finish(), MapEnd::Mapped);
    }

    #[test]
    fn the_helper_starts_once_a_vcpu_is_held_and_is_told_when_the_mapping_is_done() {
        let (map, go) = map_done_when_told();
        let gate = map.gate();
        let (helping, helped) = mpsc::channel::<usize>();
        let (finished, ended) = mpsc::channel::<()>();
        map.start_helper(move |held, done| {
            helping.send(held).unwrap();
            while !done.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            finished.send(()).unwrap();
        })
        .unwrap();
        // Nothing is held yet: the helper waits.
        assert!(helped.recv_timeout(Duration::from_millis(50)).is_err());
        let waiter = std::thread::spawn(move || gate.wait_for_dma("dev"));
        assert_eq!(helped.recv_timeout(Duration::from_secs(10)), Ok(1));
        assert!(ended.try_recv().is_err(), "told it was done before it was");
        go.send(()).unwrap();
        assert_eq!(waiter.join().unwrap(), Ok(()));
        assert_eq!(map.finish(), MapEnd::Mapped);
        assert_eq!(ended.try_recv(), Ok(()), "finish waits for the helper");
    }

    #[test]
    fn the_helper_never_runs_when_no_vcpu_waited_or_the_vm_stopped() {
        for stop in [false, true] {
            let map = RamDmaMap::new();
            let (go, release) = mpsc::channel::<()>();
            let stopping = map.stopping();
            map.start(move || {
                let _ = release.recv();
                match stopping.load(Ordering::Acquire) {
                    true => Err("stopped".to_string()),
                    false => Ok(()),
                }
            })
            .unwrap();
            let ran = Arc::new(AtomicBool::new(false));
            let flag = ran.clone();
            map.start_helper(move |_, _| flag.store(true, Ordering::SeqCst))
                .unwrap();
            if stop {
                map.stop();
            }
            drop(go);
            let end = map.finish();
            assert!(!ran.load(Ordering::SeqCst), "stop={stop}: the helper ran");
            assert_eq!(
                end,
                if stop {
                    MapEnd::Stopped
                } else {
                    MapEnd::Mapped
                }
            );
        }
    }

    #[test]
    fn a_failed_mapping_refuses_every_device() {
        let map = RamDmaMap::new();
        map.start(|| Err("ENOMEM".to_string())).unwrap();
        assert_eq!(map.finish(), MapEnd::Failed("ENOMEM".to_string()));
        let answer = map.gate().wait_for_dma("dev");
        assert_eq!(answer, Err(NoDma::MapFailed("ENOMEM".to_string())));
    }

    #[test]
    fn a_panicking_mapping_counts_as_failed() {
        let map = RamDmaMap::new();
        map.start(|| panic!("boom")).unwrap();
        assert_eq!(
            map.finish(),
            MapEnd::Failed("its thread panicked".to_string())
        );
        assert!(map.gate().wait_for_dma("dev").is_err());
    }

    #[test]
    fn a_mapping_never_started_is_not_mapped() {
        let map = RamDmaMap::new();
        assert!(matches!(map.finish(), MapEnd::Failed(_)));
    }

    #[test]
    fn a_stop_lets_a_waiting_vcpu_go_and_ends_the_mapping_at_its_next_piece() {
        let map = RamDmaMap::new();
        let gate = map.gate();
        let stopping = map.stopping();
        let (piece_done, pieces) = mpsc::channel::<usize>();
        // A mapping of 100 pieces that looks at the flag before each, as the real one does.
        map.start(move || {
            for n in 0..100 {
                if stopping.load(Ordering::Acquire) {
                    return Err(format!("stopped after {n} pieces"));
                }
                std::thread::sleep(Duration::from_millis(20));
                let _ = piece_done.send(n);
            }
            Ok(())
        })
        .unwrap();
        let waiter = std::thread::spawn(move || gate.wait_for_dma("dev"));
        pieces.recv().unwrap();
        assert!(!waiter.is_finished(), "the vCPU went before the stop");
        map.stop();
        assert_eq!(waiter.join().unwrap(), Err(NoDma::Stopping));
        assert_eq!(map.finish(), MapEnd::Stopped);
        let mapped = pieces.try_iter().count() + 1;
        assert!(mapped < 100, "the mapping ran to its end: {mapped} pieces");
        // Later devices are refused at once.
        assert_eq!(map.gate().wait_for_dma("dev"), Err(NoDma::Stopping));
    }

    #[test]
    fn a_mapping_stopped_before_it_started_is_stopped() {
        let map = RamDmaMap::new();
        map.stop();
        assert_eq!(map.finish(), MapEnd::Stopped);
        assert_eq!(map.gate().wait_for_dma("dev"), Err(NoDma::Stopping));
    }
}
