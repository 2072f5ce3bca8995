//! Rate-limited logging for messages a guest can trigger at will (a sleep state viaduct does
//! not support, a malformed eject, a driver that keeps setting bad status): without a limit a
//! guest writing one register in a loop fills the host's log. Each call site gets its own
//! budget of [`BURST`] messages per [`WINDOW`]; what is held back is counted and reported with
//! the next message that gets through.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Messages a call site may log per window.
pub const BURST: u32 = 10;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// One call site's budget.
pub struct LogLimit {
    state: Mutex<Option<State>>,
}

struct State {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    /// A fresh budget (usable in a `static`).
    pub const fn new() -> Self {
        Self {
            state: Mutex::new(None),
        }
    }

    /// Whether a message may be logged now, and if so how many were held back before it.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    /// [`LogLimit::allow`] at time `now`.
    pub fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = guard.get_or_insert(State {
            window_start: now,
            logged: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(state.window_start) >= WINDOW {
            state.window_start = now;
            state.logged = 0;
        }
        if state.logged >= BURST {
            state.suppressed += 1;
            return None;
        }
        state.logged += 1;
        Some(std::mem::take(&mut state.suppressed))
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// `log::warn!`, at most [`BURST`](crate::log_limit::BURST) times a minute per call site.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit = $crate::log_limit::LogLimit::new();
        if let Some(suppressed) = LIMIT.allow() {
            if suppressed > 0 {
                log::warn!(
                    "{} ({suppressed} more like it suppressed)",
                    format_args!($($arg)+)
                );
            } else {
                log::warn!($($arg)+);
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_then_the_rest_counted_until_the_window_ends() {
        let limit = LogLimit::new();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(limit.allow_at(t0), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(limit.allow_at(t0 + Duration::from_secs(1)), None);
        }
        // The next window lets one through, saying how many were held back.
        assert_eq!(limit.allow_at(t0 + WINDOW), Some(5));
        assert_eq!(limit.allow_at(t0 + WINDOW), Some(0));
    }

    #[test]
    fn the_macro_compiles_and_logs_through_the_log_crate() {
        for i in 0..(BURST + 3) {
            warn_limited!("message {i}");
        }
    }
}
