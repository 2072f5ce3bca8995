//! The viaduct command-line front end: flag definitions ([`cli`]), the cloud-hypervisor style
//! `key=value` option parser ([`options`]), validation into a [`vmm::config::VmConfig`]
//! ([`config`], [`disk`], [`console`]), running the VM with its `managed=on` devices ([`launch`]), the host
//! device commands ([`commands`]) and logging setup ([`logging`]). The `viaduct` binary ties
//! them together.

// Tests may unwrap: a panic there is a failed test, not a dead VMM.
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![warn(missing_docs)]

pub mod cli;
pub mod cli_errors;
pub mod commands;
pub mod config;
pub mod console;
pub mod disk;
pub mod launch;
pub mod logging;
pub mod net;
pub mod options;
pub mod remote;

/// Formats an error and its whole `source()` chain as one line, joined with `": "`.
pub use vmm::error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_is_joined() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
    }

    /// Found by the cli fuzz target: the option parser's message quoted the raw value, so a
    /// value holding a newline made `viaduct: error:` two lines.
    #[test]
    fn chain_stays_one_line_when_a_value_holds_a_newline() {
        let e = config::parse_device_keys("path=/x,a\ntty").unwrap_err();
        let line = error_chain(&e);
        assert!(!line.contains('\n'), "{line:?}");
        assert!(line.contains("a\\ntty"), "{line:?}");
    }
}
