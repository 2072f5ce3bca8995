//! The API server's threads: one polls the listening socket and accepts; each connection gets
//! a thread of its own (at most [`MAX_CONNECTIONS`] at once; more get 503 at once), which reads
//! one request, answers it and closes. Stopping the server (or dropping it) ends the accepting
//! thread, waits for the connection threads and removes the socket file viaduct created.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, info, warn};

use super::http::{self, read_request, write_response};
use super::socket::{adopt_fd, bind_path, ApiSocket, SocketError};
use super::{dispatch, ApiError, VmApi};

/// Connections served at the same time.
pub const MAX_CONNECTIONS: usize = 16;
/// How often the accepting thread looks at its stop flag.
const POLL: Duration = Duration::from_millis(200);

/// A running API server.
pub struct ApiServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    path: Option<PathBuf>,
}

fn wait_readable(listener: &UnixListener) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the call; count 1 matches.
    let n = unsafe { libc::poll(&mut pfd, 1, POLL.as_millis() as libc::c_int) };
    n > 0
}

fn serve(vm: &dyn VmApi, mut stream: UnixStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = stream.set_write_timeout(Some(http::READ_TIMEOUT));
    let (status, body) = match read_request(&mut stream) {
        Ok(req) => {
            debug!("API: {} {}", req.method, req.path);
            let answer = dispatch(vm, &req);
            if answer.0 >= 400 {
                info!(
                    "API: {} {} -> {}: {}",
                    req.method,
                    req.path,
                    answer.0,
                    String::from_utf8_lossy(&answer.1)
                );
            }
            answer
        }
        Err(http::ReadError::Closed) => return,
        Err(e) => {
            let err = ApiError::from_error(e.status(), &e);
            (err.status, err.body())
        }
    };
    if let Err(e) = write_response(&mut stream, status, &body) {
        debug!("API: the client went away before the answer: {e}");
    }
    // Closing a UNIX socket with unread input resets it, and the client would lose the answer
    // (a 413 sent before its whole body arrived): read the rest first, within limits.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut sink = [0u8; 8192];
    let mut left: usize = 4 << 20;
    while left > 0 {
        match std::io::Read::read(&mut stream, &mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// The API's listening socket, bound (or adopted) before the VM is built so that a bad
/// `--api-socket` stops viaduct before any guest RAM is mapped. Dropped without being served,
/// it removes the socket file it created.
pub struct ApiListener {
    listener: UnixListener,
    path: Option<PathBuf>,
}

impl ApiListener {
    /// Binds the socket `socket` names, or adopts the inherited one.
    pub fn open(socket: &ApiSocket) -> Result<Self, SocketError> {
        let (listener, path) = match socket {
            ApiSocket::Path(p) => (bind_path(p)?, Some(p.clone())),
            ApiSocket::Fd(fd) => (adopt_fd(*fd)?, None),
        };
        let me = Self { listener, path };
        me.listener
            .set_nonblocking(true)
            .map_err(|source| SocketError::Bind {
                path: me.path.clone().unwrap_or_default(),
                source,
            })?;
        Ok(me)
    }
}

impl Drop for ApiListener {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl ApiServer {
    /// Listens on `socket` and serves `vm` until stopped.
    pub fn start(socket: &ApiSocket, vm: Arc<dyn VmApi>) -> Result<Self, SocketError> {
        let filters = crate::seccomp::Filters::new(crate::seccomp::SeccompMode::Off)
            .expect("no filters to build when off");
        Self::serve(ApiListener::open(socket)?, vm, filters)
    }

    /// Serves `vm` on `listener` until stopped; the accepting thread (and so every connection
    /// thread it starts) confines itself with `filters` first.
    pub fn serve(
        mut listener: ApiListener,
        vm: Arc<dyn VmApi>,
        filters: crate::seccomp::Filters,
    ) -> Result<Self, SocketError> {
        let path = listener.path.take();
        let socket = listener
            .listener
            .try_clone()
            .map_err(|source| SocketError::Bind {
                path: path.clone().unwrap_or_default(),
                source,
            })?;
        drop(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                if let Err(e) = filters.apply(crate::seccomp::ThreadKind::Api) {
                    log::error!("API: not serving: {}", crate::error_chain(&e));
                    return;
                }
                accept_loop(socket, vm, stop_flag)
            });
        let thread = match thread {
            Ok(t) => t,
            Err(source) => {
                if let Some(p) = &path {
                    let _ = std::fs::remove_file(p);
                }
                return Err(SocketError::Bind {
                    path: path.unwrap_or_default(),
                    source,
                });
            }
        };
        if let Some(p) = &path {
            info!("API listening on {}", p.display());
        }
        Ok(Self {
            stop,
            thread: Some(thread),
            path,
        })
    }

    /// Stops accepting, waits for the requests in flight and removes the socket file.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = self.path.take() {
            if let Err(e) = std::fs::remove_file(&p) {
                warn!("removing the API socket {}: {e}", p.display());
            }
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: UnixListener, vm: Arc<dyn VmApi>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        workers.retain(|w| !w.is_finished());
        if !wait_readable(&listener) {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                warn!("API: accept failed: {e}");
                std::thread::sleep(POLL);
                continue;
            }
        };
        let _ = stream.set_nonblocking(false);
        if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            let mut stream = stream;
            let e = ApiError::new(503, "too many API connections at once; retry");
            let _ = write_response(&mut stream, 503, &e.body());
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let (vm, done) = (vm.clone(), active.clone());
        match std::thread::Builder::new()
            .name("api-conn".into())
            .spawn(move || {
                serve(vm.as_ref(), stream);
                done.fetch_sub(1, Ordering::AcqRel);
            }) {
            Ok(h) => workers.push(h),
            Err(e) => {
                active.fetch_sub(1, Ordering::AcqRel);
                warn!("API: cannot start a connection thread: {e}");
            }
        }
    }
    for w in workers {
        let _ = w.join();
    }
}
