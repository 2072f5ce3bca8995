//! The API's listening socket: a path viaduct binds (mode 0600, removed at exit; a live socket
//! of another process is refused, a stale one replaced), or a listening socket handed over as a
//! file descriptor (cloud-hypervisor's `fd=N`).

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Where the API listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiSocket {
    /// A socket file viaduct creates.
    Path(PathBuf),
    /// A listening UNIX socket inherited as this descriptor.
    Fd(RawFd),
}

/// Why the API socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process listens there.
    #[error(
        "--api-socket {}: another process is listening on it (another viaduct?); stop it or \
         choose another path",
        .0.display()
    )]
    InUse(PathBuf),
    /// The path is something else than a socket.
    #[error("--api-socket {}: it exists and is not a socket; remove it or choose another path", .0.display())]
    NotASocket(PathBuf),
    /// Binding or preparing the path failed.
    #[error("--api-socket {}: cannot listen there", .path.display())]
    Bind {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The descriptor is not a listening UNIX socket.
    #[error("--api-socket fd={fd}: not a listening UNIX socket")]
    BadFd {
        /// The descriptor.
        fd: RawFd,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Binds `path`: a stale socket file is replaced, a live one refused; the socket is mode 0600.
pub fn bind_path(path: &Path) -> Result<UnixListener, SocketError> {
    let bind_err = |source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse(path.to_path_buf()));
            }
            // Nobody answers: left behind by a process that died. Replace it.
            std::fs::remove_file(path).map_err(bind_err)?;
        }
        Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Adopts the listening socket `fd`.
pub fn adopt_fd(fd: RawFd) -> Result<UnixListener, SocketError> {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `kind` and `len` are valid for writing; getsockopt only inspects `fd`.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if ret != 0 || kind == 0 {
        let source = if ret != 0 {
            io::Error::last_os_error()
        } else {
            io::Error::other("the socket is not listening")
        };
        return Err(SocketError::BadFd { fd, source });
    }
    // SAFETY: `fd` is a listening socket handed to this process for the API; from here on the
    // listener owns it.
    Ok(unsafe { UnixListener::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("viaduct-api-{}-{name}", std::process::id()))
    }

    #[test]
    fn a_fresh_socket_is_private_a_stale_one_replaced_a_live_one_refused() {
        let path = scratch("sock");
        let _ = std::fs::remove_file(&path);
        let live = bind_path(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(bind_path(&path), Err(SocketError::InUse(_))));
        drop(live);
        // The file stays behind, nobody listens: replaced.
        assert!(path.exists());
        let again = bind_path(&path).unwrap();
        drop(again);
        std::fs::remove_file(&path).unwrap();
        // A regular file is not touched.
        std::fs::write(&path, b"data").unwrap();
        assert!(matches!(bind_path(&path), Err(SocketError::NotASocket(_))));
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn only_a_listening_socket_is_adopted() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = adopt_fd(std::os::fd::AsRawFd::as_raw_fd(&file)).unwrap_err();
        assert!(err.to_string().contains("not a listening UNIX socket"));
    }
}
