//! The command line: clap's parsing of viaduct's flags and commands, then the cloud-hypervisor
//! style option parser and every value check on the config path (src/options.rs, src/config.rs,
//! src/disk.rs). The first byte picks the entry point; the rest is the arguments, NUL-separated.
//! Nothing may panic, and every error is one line (what `viaduct: error: …` prints).
//!
//! Nothing is started and nothing is written: values that would create a file (`--serial
//! file=`) are parsed only up to that point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use viaduct::cli::Cli;
use viaduct::{cli_errors, config, console, disk, error_chain, options};

fn one_line(what: &str, message: &str) {
    assert!(
        !message.contains('\n'),
        "{what}: multi-line error: {message:?}"
    );
    assert!(!message.is_empty(), "{what}: empty error");
}

fn check<T>(what: &str, r: Result<T, config::ConfigError>) {
    if let Err(e) = r {
        one_line(what, &error_chain(&e));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let args: Vec<&str> = text.split('\0').collect();
    let value = args.first().copied().unwrap_or_default();
    let owned: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    match mode % 16 {
        0 => check("--cpus", config::parse_cpus(value)),
        1 => check("--memory", config::parse_memory(value)),
        2 => check("--console", console::parse_console(value)),
        3 => check("--api-socket", config::parse_api_socket(value)),
        4 => check("--platform", config::parse_platform(value)),
        5 => check("--pci-segment", config::parse_pci_segment(value)),
        6 => check("--device", config::parse_device_keys(value)),
        7 => check("--seccomp", config::parse_seccomp(value)),
        8 => check(
            "--disk",
            disk::parse_disks(&owned, usize::from(mode >> 4) + 1),
        ),
        9 => check(
            "--device",
            config::parse_devices(&owned, usize::from(mode >> 4) + 1),
        ),
        10 => {
            if !value.contains("file=") {
                check("--serial", config::parse_serial(value));
            }
        }
        11 => {
            if let Err(e) = options::parse_size(value) {
                one_line("size", &e.to_string());
            }
            if let Ok(parts) = options::split_commas(value) {
                assert!(parts.len() <= value.len() + 1);
            }
        }
        _ => {
            // The whole command line; with mode bit 4, after a kernel that exists so the
            // other flags' checks are reached.
            let mut argv = vec!["viaduct"];
            if mode & 0x10 != 0 {
                argv.extend(["--kernel", "/proc/self/exe"]);
            }
            argv.extend(args.iter().copied());
            match Cli::parse_args(&argv) {
                Err(e) if e.use_stderr() => one_line("clap", &cli_errors::one_line(&e)),
                Err(_) => {}
                Ok(cli) => {
                    let creates_file = argv.iter().any(|a| a.contains("file="));
                    if cli.command.is_none() && !creates_file {
                        check("config", config::build(&cli));
                    }
                }
            }
        }
    }
});
