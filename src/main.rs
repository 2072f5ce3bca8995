//! The `viaduct` binary: runs a host device command when one is given, and otherwise parses the
//! VM command line and runs the VM. Exit status: 0 for success (a guest power-off or reboot
//! request), 2 for a bad command line, 1 when the VM or the command fails.

use std::process::ExitCode;

use viaduct::{cli::Cli, cli_errors, commands, config, error_chain, launch, logging};

fn main() -> ExitCode {
    let cli = match Cli::parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        // --help and --version print and exit 0, as clap does.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("viaduct: error: {}", cli_errors::one_line(&e));
            return ExitCode::from(2);
        }
    };
    logging::init(cli.verbose);

    if let Some(command) = &cli.command {
        return commands::run(command);
    }

    let config = match config::build(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("viaduct: error: {}", error_chain(&e));
            return ExitCode::from(2);
        }
    };
    log::debug!("VM configuration: {config:?}");
    launch::run(config)
}
