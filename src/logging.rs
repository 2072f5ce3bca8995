//! Logging setup: env_logger on stderr, level chosen by `-v` and overridable with `RUST_LOG`.
//!
//! Lines look like `viaduct 2025-01-01T12:00:00Z INFO  vmm: message`.

use std::io::Write;

use log::LevelFilter;

/// The level for a number of `-v` flags: none = warn, 1 = info, 2 = debug, 3 or more = trace.
pub fn level_for(verbosity: u8) -> LevelFilter {
    match verbosity {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Installs the global logger. `RUST_LOG`, when set and non-empty, is applied on top of the
/// `-v` level (so `RUST_LOG=debug` replaces it and `RUST_LOG=vmm=trace` refines it).
pub fn init(verbosity: u8) {
    let mut builder = env_logger::Builder::new();
    builder
        .target(env_logger::Target::Stderr)
        .filter_level(level_for(verbosity))
        .format(|buf, record| {
            let style = buf.default_level_style(record.level());
            writeln!(
                buf,
                "viaduct {} {style}{:<5}{style:#} {}: {}",
                buf.timestamp_millis(),
                record.level(),
                record.target(),
                record.args()
            )
        });
    if let Ok(filters) = std::env::var("RUST_LOG") {
        if !filters.is_empty() {
            builder.parse_filters(&filters);
        }
    }
    // Only fails if a logger is already installed, which is harmless.
    let _ = builder.try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_levels() {
        assert_eq!(level_for(0), LevelFilter::Warn);
        assert_eq!(level_for(1), LevelFilter::Info);
        assert_eq!(level_for(2), LevelFilter::Debug);
        assert_eq!(level_for(3), LevelFilter::Trace);
        assert_eq!(level_for(200), LevelFilter::Trace);
    }
}
