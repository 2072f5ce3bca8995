//! `--console off|null|tty|file=PATH` (the virtio console, the guest's `hvc0`; default `tty`
//! as in cloud-hypervisor) and `--rng src=PATH` (virtio-rng; default `src=/dev/urandom`).
//!
//! `file=` must be creatable or writable (the VMM truncates it at start, as `--serial file=`);
//! `src=` must exist, not be a directory, and open for reading. cloud-hypervisor's `pty`,
//! `socket=` and `iommu=` are rejected as unsupported. `--serial tty` and `--console tty`
//! cannot both own the terminal: that is checked in [`check_one_tty`].

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use vmm::config::{ConsoleMode, RngConfig, SerialMode};

use crate::config::{ConfigError, InvalidValue};
use crate::options::OptionSpec;

/// `--console` keys after the mode (all unsupported).
const CONSOLE_KEYS: OptionSpec = OptionSpec::new(&[]).unsupported(&["iommu"]);

/// `--rng` keys.
const RNG: OptionSpec = OptionSpec::new(&["src"]).unsupported(&["iommu"]);

/// Why a `--console` or `--rng` value was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// A cloud-hypervisor console mode viaduct does not implement.
    #[error("console mode \"{0}\" is not supported by viaduct; use off, null, tty or file=PATH")]
    Unsupported(&'static str),
    /// Not a console mode at all.
    #[error("unknown console mode; expected off, null, tty or file=PATH")]
    Unknown,
    /// `file=` without a path.
    #[error("file= needs a path")]
    EmptyPath,
    /// The console file cannot be created or opened for writing.
    #[error("cannot open {path} for writing")]
    Unwritable {
        /// The path, printable.
        path: String,
        /// What `open` said.
        #[source]
        source: io::Error,
    },
    /// `--serial tty` and `--console tty` together.
    #[error(
        "--serial tty is given too, and only one of them can use the terminal: keep the \
         virtio console (hvc0) with --serial off|null|file=PATH, or the serial port (ttyS0) \
         with --console off"
    )]
    BothTty,
    /// `--rng src=` empty.
    #[error("src= needs the path of an entropy source, e.g. src=/dev/urandom")]
    RngEmptySource,
    /// `--rng src=` cannot be used.
    #[error("cannot read the entropy source {path}")]
    RngSource {
        /// The path, printable.
        path: String,
        /// What `open` said.
        #[source]
        source: io::Error,
    },
    /// `--rng src=` is a directory.
    #[error("the entropy source {0} is a directory; give a device or file such as /dev/urandom")]
    RngDirectory(String),
}

/// Parses `--console`.
pub fn parse_console(value: &str) -> Result<ConsoleMode, ConfigError> {
    let invalid = |reason: InvalidValue| ConfigError::invalid("--console", value, reason);
    let console = |e: ConsoleError| invalid(InvalidValue::Console(e));
    let (mode, rest) = value.split_once(',').unwrap_or((value, ""));
    if !rest.is_empty() {
        CONSOLE_KEYS.parse(rest).map_err(|e| invalid(e.into()))?;
    }
    match mode {
        "off" => Ok(ConsoleMode::Off),
        "null" => Ok(ConsoleMode::Null),
        "tty" => Ok(ConsoleMode::Tty),
        "pty" => Err(console(ConsoleError::Unsupported("pty"))),
        _ if mode.starts_with("socket=") => Err(console(ConsoleError::Unsupported("socket="))),
        _ => {
            let Some(path) = mode.strip_prefix("file=") else {
                return Err(console(ConsoleError::Unknown));
            };
            if path.is_empty() {
                return Err(console(ConsoleError::EmptyPath));
            }
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(path)
                .map_err(|source| {
                    console(ConsoleError::Unwritable {
                        path: path.to_string(),
                        source,
                    })
                })?;
            Ok(ConsoleMode::File(PathBuf::from(path)))
        }
    }
}

/// Refuses `--serial tty` with `--console tty` (`console_value` as given, for the message).
pub fn check_one_tty(
    serial: &SerialMode,
    console: &ConsoleMode,
    console_value: &str,
) -> Result<(), ConfigError> {
    if *serial == SerialMode::Tty && *console == ConsoleMode::Tty {
        return Err(ConfigError::invalid(
            "--console",
            console_value,
            InvalidValue::Console(ConsoleError::BothTty),
        ));
    }
    Ok(())
}

/// Parses `--rng src=PATH`.
pub fn parse_rng(value: &str) -> Result<RngConfig, ConfigError> {
    let invalid = |reason: InvalidValue| ConfigError::invalid("--rng", value, reason);
    let rng = |e: ConsoleError| invalid(InvalidValue::Console(e));
    let options = RNG.parse(value).map_err(|e| invalid(e.into()))?;
    let Some(src) = options.get("src") else {
        return Ok(RngConfig::default());
    };
    if src.is_empty() {
        return Err(rng(ConsoleError::RngEmptySource));
    }
    let unreadable = |source| {
        rng(ConsoleError::RngSource {
            path: src.to_string(),
            source,
        })
    };
    if fs::metadata(src).map_err(unreadable)?.is_dir() {
        return Err(rng(ConsoleError::RngDirectory(src.to_string())));
    }
    // Non-blocking, so that a FIFO without a writer does not hang the check.
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(src)
        .map_err(unreadable)?;
    Ok(RngConfig {
        src: PathBuf::from(src),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(e: &ConfigError) -> String {
        vmm::error_chain(e)
    }

    #[test]
    fn console_modes() {
        assert_eq!(parse_console("off").unwrap(), ConsoleMode::Off);
        assert_eq!(parse_console("null").unwrap(), ConsoleMode::Null);
        assert_eq!(parse_console("tty").unwrap(), ConsoleMode::Tty);
        let dir = std::env::temp_dir().join(format!("viaduct-console-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("hvc0.log");
        fs::write(&log, b"kept until the VM starts").unwrap();
        let value = format!("file={}", log.display());
        assert_eq!(
            parse_console(&value).unwrap(),
            ConsoleMode::File(log.clone())
        );
        assert_eq!(fs::read(&log).unwrap(), b"kept until the VM starts");
        let e = chain(&parse_console(&format!("file={}", dir.display())).unwrap_err());
        assert!(
            e.starts_with(&format!("--console file={}: cannot open", dir.display())),
            "{e}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn console_errors_name_the_flag_and_say_what_is_accepted() {
        for (value, needle) in [
            ("pty", "\"pty\" is not supported"),
            ("socket=/tmp/c.sock", "\"socket=\" is not supported"),
            (
                "tyy",
                "unknown console mode; expected off, null, tty or file=PATH",
            ),
            ("", "unknown console mode"),
            ("file=", "file= needs a path"),
            ("tty,iommu=on", "iommu"),
            ("tty,foo=1", "foo"),
        ] {
            let e = chain(&parse_console(value).unwrap_err());
            assert!(e.starts_with(&format!("--console {value}")), "{e}");
            assert!(e.contains(needle), "{value}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn serial_and_console_cannot_both_be_tty() {
        let e = check_one_tty(&SerialMode::Tty, &ConsoleMode::Tty, "tty").unwrap_err();
        let e = chain(&e);
        assert!(
            e.starts_with("--console tty: --serial tty is given too"),
            "{e}"
        );
        assert!(e.contains("--console off"), "{e}");
        for (serial, console) in [
            (SerialMode::Tty, ConsoleMode::Off),
            (SerialMode::Tty, ConsoleMode::Null),
            (SerialMode::Null, ConsoleMode::Tty),
            (SerialMode::Off, ConsoleMode::Tty),
        ] {
            check_one_tty(&serial, &console, "x").unwrap();
        }
    }

    #[test]
    fn rng_source() {
        assert_eq!(parse_rng("src=/dev/urandom").unwrap(), RngConfig::default());
        assert_eq!(
            parse_rng("src=/dev/zero").unwrap().src,
            PathBuf::from("/dev/zero")
        );
        for (value, needle) in [
            (
                "src=/nonexistent/rng",
                "cannot read the entropy source /nonexistent/rng: No such file",
            ),
            ("src=/tmp", "is a directory"),
            ("src=", "src= needs the path"),
            ("iommu=on", "iommu"),
            ("/dev/urandom", "src"),
            ("src=/etc/passwd/x", "Not a directory"),
        ] {
            let e = chain(&parse_rng(value).unwrap_err());
            assert!(e.starts_with(&format!("--rng {value}")), "{e}");
            assert!(e.contains(needle), "{value}: {e}");
        }
    }
}
