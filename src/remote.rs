//! `viaduct remote --api-socket PATH <command>`: a client of a running viaduct's control API,
//! with `ch-remote`'s commands and arguments. It prints the server's JSON answer; on an error it
//! prints the server's message and exits 1 (2 for a malformed command line).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use vmm::api::AddDeviceRequest;

use crate::cli::RemoteCommand;

/// How long to wait for an answer (a removal waits for the guest to eject, up to its own
/// bound).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a request could not be made or answered.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Nothing listens on the socket.
    #[error(
        "cannot connect to the API socket {}: is viaduct running with --api-socket {}?",
        .path.display(),
        .path.display()
    )]
    Connect {
        /// The socket.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed half way.
    #[error("talking to the API")]
    Io(#[source] std::io::Error),
    /// The answer is not HTTP.
    #[error("the API's answer is not HTTP: {0}")]
    BadAnswer(String),
}

/// An HTTP exchange: the status and the body.
pub fn request(
    socket: &Path,
    method: &str,
    endpoint: &str,
    body: Option<&str>,
) -> Result<(u16, String), RemoteError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| RemoteError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(RemoteError::Io)?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(RemoteError::Io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(RemoteError::Io)?;
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(RemoteError::BadAnswer("it ends in its headers".into()))
        }
        Err(e) => return Err(RemoteError::BadAnswer(e.to_string())),
    };
    let status = response.code.unwrap_or(0);
    Ok((
        status,
        String::from_utf8_lossy(&raw[head_len..]).into_owned(),
    ))
}

/// The server's error text: its JSON array of messages joined, or the body as it is.
fn error_text(body: &str) -> String {
    match serde_json::from_str::<Vec<String>>(body) {
        Ok(lines) => lines.join(": "),
        Err(_) => body.trim().to_string(),
    }
}

fn add_device_body(value: &str) -> Result<String, String> {
    let parsed = crate::config::parse_device_keys(value).map_err(|e| crate::error_chain(&e))?;
    let segment = u16::try_from(parsed.segment).map_err(|_| {
        format!(
            "add-device {value}: pci_segment {} is too large",
            parsed.segment
        )
    })?;
    let request = AddDeviceRequest {
        path: parsed.path,
        id: parsed.id,
        pci_segment: Some(segment),
        x_nv_gpudirect_clique: parsed.gpudirect_clique,
        managed: Some(parsed.managed),
        iommu: None,
    };
    serde_json::to_string(&request).map_err(|e| e.to_string())
}

/// Runs one remote command.
pub fn run(socket: &Path, command: &RemoteCommand) -> ExitCode {
    let (method, endpoint, body) = match command {
        RemoteCommand::Ping => ("GET", "vmm.ping", None),
        RemoteCommand::Info => ("GET", "vm.info", None),
        RemoteCommand::AddDevice { device } => match add_device_body(device) {
            Ok(body) => ("PUT", "vm.add-device", Some(body)),
            Err(e) => {
                eprintln!(
                    "viaduct: error: {}",
                    e.replacen("--device", "add-device", 1)
                );
                return ExitCode::from(2);
            }
        },
        RemoteCommand::RemoveDevice { id } => (
            "PUT",
            "vm.remove-device",
            Some(serde_json::json!({ "id": id }).to_string()),
        ),
        RemoteCommand::Shutdown => ("PUT", "vm.shutdown", None),
        RemoteCommand::Reboot => ("PUT", "vm.reboot", None),
        RemoteCommand::PowerButton => ("PUT", "vm.power-button", None),
        RemoteCommand::ShutdownVmm => ("PUT", "vmm.shutdown", None),
    };
    match request(socket, method, endpoint, body.as_deref()) {
        Ok((status, body)) if (200..300).contains(&status) => {
            if !body.is_empty() {
                println!("{}", body.trim_end());
            }
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!(
                "viaduct: error: {endpoint}: {status}: {}",
                error_text(&body)
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("viaduct: error: {}", crate::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_device_values_become_the_api_body() {
        let body = add_device_body("path=/sys/bus/pci/devices/0000:01:00.0/,id=gpu0,pci_segment=1")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["path"], "/sys/bus/pci/devices/0000:01:00.0/");
        assert_eq!(v["id"], "gpu0");
        assert_eq!(v["pci_segment"], 1);
        let e = add_device_body("id=gpu0").unwrap_err();
        assert!(e.contains("path= is required"), "{e}");
        assert!(add_device_body("path=/x,colour=red").is_err());
    }

    #[test]
    fn server_errors_are_printed_as_one_line() {
        assert_eq!(
            error_text(r#"["cannot attach gpu0","the group is not viable"]"#),
            "cannot attach gpu0: the group is not viable"
        );
        assert_eq!(error_text("plain\n"), "plain");
    }

    #[test]
    fn a_missing_socket_says_what_to_check() {
        let err = request(
            Path::new("/nonexistent/viaduct.sock"),
            "GET",
            "vmm.ping",
            None,
        )
        .unwrap_err();
        assert!(err
            .to_string()
            .contains("is viaduct running with --api-socket"));
    }
}
