//! The host device commands (`viaduct devices|bind|unbind|sriov|mdev|check`): each parses its
//! arguments, calls `vfio_dev::host` on the host's paths ([`HostPaths::from_env`]) and prints
//! the result. Exit status: 0 done, 1 failed (or, for `check`, not ready), 2 a bad argument.

use std::process::ExitCode;

use vfio_dev::host::binding::{self, BindOptions, Original};
use vfio_dev::host::check::{self, Memlock, Request};
use vfio_dev::host::inventory::{self, ClassFilter, PciFunction};
use vfio_dev::host::{mdev, sriov, HostBdf, HostError, HostPaths, KernelWriter};

use crate::cli::{Command, DeviceClass, MdevCommand};

/// Prints `e` as viaduct's one error line and picks the exit status: 2 for a malformed
/// argument, 1 otherwise.
fn fail(e: &HostError) -> ExitCode {
    eprintln!("viaduct: error: {}", crate::error_chain(e));
    match e {
        HostError::BadBdf { .. } | HostError::BadUuid { .. } => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

fn bdfs(args: &[String]) -> Result<Vec<HostBdf>, HostError> {
    args.iter().map(|a| a.parse()).collect()
}

/// Runs one command.
pub fn run(command: &Command) -> ExitCode {
    let paths = HostPaths::from_env();
    let result = match command {
        Command::Devices { class, json } => devices(&paths, *class, *json),
        Command::Bind {
            devices,
            group,
            force,
        } => bind(&paths, devices, *group, *force),
        Command::Unbind { devices, group } => unbind(&paths, devices, *group),
        Command::Sriov { device, numvfs } => set_vfs(&paths, device, *numvfs),
        Command::Mdev { action } => mdev_command(&paths, action),
        Command::Check { devices, memory } => return check(&paths, devices, memory),
        Command::Remote { api_socket, action } => return crate::remote::run(api_socket, action),
    };
    match result {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn devices(paths: &HostPaths, class: DeviceClass, json: bool) -> Result<ExitCode, HostError> {
    let filter = match class {
        DeviceClass::Gpu => ClassFilter::Gpu,
        DeviceClass::Net => ClassFilter::Net,
        DeviceClass::Storage => ClassFilter::Storage,
        DeviceClass::All => ClassFilter::All,
    };
    let list: Vec<PciFunction> = inventory::list(paths)?
        .into_iter()
        .filter(|d| filter.matches(d.class))
        .collect();
    if json {
        println!("{}", inventory::json(&list));
    } else {
        print!("{}", inventory::table(&list));
    }
    Ok(ExitCode::SUCCESS)
}

fn bind(
    paths: &HostPaths,
    args: &[String],
    group: bool,
    force: bool,
) -> Result<ExitCode, HostError> {
    let opts = BindOptions {
        force,
        group,
        pid: None,
    };
    let report = binding::bind(paths, &KernelWriter, &bdfs(args)?, opts)?;
    for b in &report.bound {
        let why = if b.for_group {
            " (it shares the IOMMU group)"
        } else {
            ""
        };
        if b.changed {
            println!(
                "{}: bound to vfio-pci (was on {}){why}",
                b.bdf,
                b.from.as_deref().unwrap_or("no driver")
            );
        } else {
            println!("{}: already on vfio-pci", b.bdf);
        }
    }
    for (g, m) in &report.must_follow {
        eprintln!(
            "viaduct: warning: IOMMU group {g} also holds {} ({}, on {}): the group cannot be \
             passed through until it follows: `viaduct bind --group {}`",
            m.name,
            m.describe(),
            m.driver.as_deref().unwrap_or("no driver"),
            args.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn unbind(paths: &HostPaths, args: &[String], group: bool) -> Result<ExitCode, HostError> {
    let report = binding::unbind(paths, &KernelWriter, &bdfs(args)?, group)?;
    let mut code = ExitCode::SUCCESS;
    for d in &report.devices {
        let now = d.now.as_deref().unwrap_or("no driver");
        match (&d.original, d.changed, d.restored()) {
            (_, false, _) => println!("{}: not on vfio-pci (on {now}); left alone", d.bdf),
            (Original::Driver(o), true, true) => println!("{}: back on {o}", d.bdf),
            (Original::Unbound, true, true) => println!("{}: unbound, as it was", d.bdf),
            (Original::Unknown, true, _) => println!(
                "{}: released from vfio-pci; the kernel gave it to {now} (viaduct had no record \
                 of its driver)",
                d.bdf
            ),
            (Original::Driver(o), true, false) => {
                eprintln!(
                    "viaduct: error: {} did not go back to {o} (it is on {now}); the kernel log \
                     (`dmesg | tail`) says why",
                    d.bdf
                );
                code = ExitCode::FAILURE;
            }
            (Original::Unbound, true, false) => {
                println!("{}: released from vfio-pci; now on {now}", d.bdf)
            }
        }
    }
    for m in &report.group_still_bound {
        eprintln!(
            "viaduct: warning: {m} shares the IOMMU group and stays on vfio-pci; `viaduct unbind \
             --group {}` gives it back too",
            args.join(" ")
        );
    }
    Ok(code)
}

fn set_vfs(paths: &HostPaths, device: &str, n: u32) -> Result<ExitCode, HostError> {
    let bdf: HostBdf = device.parse()?;
    let change = sriov::set_numvfs(paths, &KernelWriter, &bdf, n)?;
    if change.before == change.after {
        println!("{bdf}: {} VFs (unchanged)", change.after);
    } else {
        println!(
            "{bdf}: {} VFs (was {}; at most {})",
            change.after, change.before, change.total
        );
    }
    if let Ok(f) = PciFunction::read(paths, &bdf) {
        if let Some(s) = f.sriov.filter(|s| !s.vfs.is_empty()) {
            println!("VFs: {}", s.vfs.join(" "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn mdev_command(paths: &HostPaths, action: &MdevCommand) -> Result<ExitCode, HostError> {
    match action {
        MdevCommand::Create {
            parent,
            mdev_type,
            uuid,
        } => {
            let created = mdev::create(
                paths,
                &KernelWriter,
                &parent.parse()?,
                mdev_type,
                uuid.as_deref(),
            )?;
            println!("{}", created.uuid);
            eprintln!(
                "viaduct: created mediated device {} ({mdev_type} on {parent}); pass it to a VM \
                 with --device path={}/",
                created.uuid,
                created.path.display()
            );
        }
        MdevCommand::Remove { uuid } => {
            mdev::remove(paths, &KernelWriter, uuid)?;
            println!("removed mediated device {uuid}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check(paths: &HostPaths, devices: &[String], memory: &str) -> ExitCode {
    let memory = match crate::config::parse_memory(memory) {
        Ok(m) => m,
        Err(e) => {
            eprintln!(
                "viaduct: error: {}",
                crate::error_chain(&e).replacen("--memory", "check --memory", 1)
            );
            return ExitCode::from(2);
        }
    };
    let hugepages = memory.backing.hugepages.then(|| {
        memory
            .backing
            .hugepage_size
            .or_else(|| vfio_dev::host::memory::default_hugepage_size(paths))
            .unwrap_or(2 << 20)
    });
    let request = Request {
        devices,
        memory: memory.bytes,
        hugepages,
        memlock: Memlock::current(),
    };
    let report = check::run(paths, &request);
    print!("{}", report.render());
    if report.ready() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
