//! Command-line errors as one line: clap's own (an unknown flag, a missing value) are folded
//! into the `viaduct: error: …` form every other command-line error has, with clap's tip kept,
//! and a cloud-hypervisor flag viaduct does not have is named as such, so a user running a
//! script written for cloud-hypervisor learns at once which flag to drop.

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// cloud-hypervisor flags viaduct does not implement, with what to do instead.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "--balloon",
        "there is no balloon device; size --memory for the guest",
    ),
    (
        "--dbus-object-path",
        "there is no D-Bus interface; use --api-socket",
    ),
    (
        "--dbus-service-name",
        "there is no D-Bus interface; use --api-socket",
    ),
    (
        "--dbus-system-bus",
        "there is no D-Bus interface; use --api-socket",
    ),
    ("--debug-console", "use --serial or --console"),
    (
        "--event-monitor",
        "follow the VM with -v on stderr or the API's vm.info",
    ),
    (
        "--firmware",
        "viaduct boots a kernel directly: give --kernel (and --initramfs)",
    ),
    ("--fs", "there is no virtio-fs (vhost-user-fs) device"),
    ("--gdb", "there is no gdb stub"),
    ("--landlock", "there is no Landlock sandbox"),
    ("--landlock-rules", "there is no Landlock sandbox"),
    ("--log-file", "viaduct logs to stderr: redirect it (2>FILE)"),
    (
        "--memory-zone",
        "give one --memory for the whole guest; there are no NUMA memory zones",
    ),
    ("--numa", "the guest has one NUMA node"),
    ("--pmem", "there is no virtio-pmem device; use --disk"),
    ("--rate-limit-group", "there are no I/O rate limits"),
    ("--restore", "there are no snapshots"),
    ("--sgx-epc", "there is no SGX enclave memory"),
    ("--tpm", "there is no TPM device"),
    (
        "--user-device",
        "there are no vfio-user devices; pass host devices with --device",
    ),
    ("--vdpa", "there are no vDPA devices"),
    ("--vsock", "there is no virtio-vsock device"),
    ("--watchdog", "there is no watchdog device"),
];

/// What to say about the cloud-hypervisor flag `flag` (`--fs` or `--fs=...`), if it is one
/// viaduct does not implement.
pub fn unsupported_flag(flag: &str) -> Option<(&'static str, &'static str)> {
    let name = flag.split('=').next().unwrap_or(flag);
    UNSUPPORTED.iter().copied().find(|(f, _)| *f == name)
}

/// The one-line form of a clap error (without the `viaduct: error: ` prefix).
pub fn one_line(e: &clap::Error) -> String {
    let invalid = e.get(ContextKind::InvalidArg).and_then(|v| match v {
        ContextValue::String(s) => Some(s.clone()),
        _ => None,
    });
    if e.kind() == ErrorKind::UnknownArgument {
        if let Some((flag, what)) = invalid.as_deref().and_then(unsupported_flag) {
            return format!("cloud-hypervisor's {flag} is not supported by viaduct: {what}");
        }
    }
    let rendered = e.render().to_string();
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines
        .next()
        .unwrap_or("invalid command line")
        .trim_start_matches("error: ")
        .to_string();
    let tip = lines
        .find_map(|l| l.strip_prefix("tip: "))
        .map(|t| format!(" ({t})"))
        .unwrap_or_default();
    format!("{first}{tip}; see viaduct --help")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;

    fn error_of(args: &[&str]) -> String {
        let e = Cli::parse_args(std::iter::once("viaduct").chain(args.iter().copied()))
            .expect_err("rejected");
        one_line(&e)
    }

    #[test]
    fn cloud_hypervisor_flags_are_named_as_such() {
        for flag in [
            "--fs",
            "--vsock",
            "--balloon",
            "--numa",
            "--memory-zone",
            "--tpm",
        ] {
            let e = error_of(&["--kernel", "k", flag, "x"]);
            assert!(
                e.starts_with(&format!(
                    "cloud-hypervisor's {flag} is not supported by viaduct: "
                )),
                "{e}"
            );
        }
        let e = error_of(&["--kernel", "k", "--watchdog"]);
        assert!(e.contains("--watchdog is not supported"), "{e}");
    }

    #[test]
    fn clap_errors_become_one_line_with_the_tip() {
        let e = error_of(&["--kernal", "k"]);
        assert_eq!(
            e,
            "unexpected argument '--kernal' found (a similar argument exists: '--kernel'); see \
             viaduct --help"
        );
        let e = error_of(&["--kernel", "k", "--cpus"]);
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("a value is required for '--cpus"), "{e}");
    }

    #[test]
    fn every_unsupported_flag_is_unknown_to_viaduct() {
        let cli = <Cli as clap::CommandFactory>::command();
        for (flag, _) in UNSUPPORTED {
            let name = flag.trim_start_matches("--");
            assert!(
                cli.get_arguments().all(|a| a.get_long() != Some(name)),
                "{flag} is both supported and in the unsupported list"
            );
        }
    }
}
