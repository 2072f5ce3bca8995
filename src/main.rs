//! The `viaduct` binary: parses the command line, runs the VM and maps the outcome to an exit
//! status (0 for a guest power-off or reboot request, 2 for a bad command line, 1 when the VM
//! fails).

use std::process::ExitCode;

use clap::Parser;
use viaduct::{cli::Cli, config, error_chain, logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose);

    let config = match config::build(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("viaduct: error: {}", error_chain(&e));
            return ExitCode::from(2);
        }
    };
    log::debug!("VM configuration: {config:?}");

    match vmm::run(config) {
        Ok(vmm::Outcome::PowerOff) => ExitCode::SUCCESS,
        Ok(vmm::Outcome::Reboot) => {
            eprintln!(
                "viaduct: the guest asked to reboot; viaduct does not restart guests in place, \
                 exiting"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("viaduct: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
