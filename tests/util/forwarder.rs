//! A stand-in for the engine's socket, to take the engine away from one
//! server without touching the machine's engine (other tests share it): a
//! unix socket that forwards every connection to the real engine's socket,
//! and can be cut (every connection dropped, the socket gone: the engine is
//! unreachable) and brought back at the same address.

use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::{executor, spawn};

pub struct EngineForwarder {
    path: PathBuf,
    engine: PathBuf,
    /// Cancelled by `cut`: ends the accept loop and every connection.
    up: CancellationToken,
}

impl EngineForwarder {
    /// Listens at `path`, forwarding to the socket of the engine under test.
    pub fn start(path: &Path) -> Self {
        let endpoint = &super::under_test().endpoint;
        let engine = endpoint
            .strip_prefix("unix://")
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("the engine under test is not on a unix socket: {endpoint}"));
        let forwarder = Self {
            path: path.to_owned(),
            engine,
            up: CancellationToken::new(),
        };
        forwarder.listen();
        forwarder
    }

    /// `unix://…`, for `DOCKER_HOST`.
    pub fn address(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    fn listen(&self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = {
            let _context = executor().enter();
            UnixListener::bind(&self.path).expect("bind the forwarding socket")
        };
        let (up, engine) = (self.up.clone(), self.engine.clone());
        spawn(async move {
            loop {
                let client = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => return,
                    },
                    _ = up.cancelled() => return,
                };
                let (up, engine) = (up.clone(), engine.clone());
                tokio::spawn(async move {
                    let Ok(mut engine) = UnixStream::connect(&engine).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut engine) => {}
                        _ = up.cancelled() => {}
                    }
                });
            }
        });
    }

    /// The engine is gone: every connection is dropped and nothing answers.
    pub fn cut(&mut self) {
        self.up.cancel();
        let _ = std::fs::remove_file(&self.path);
    }

    /// The engine is back at the same address.
    pub fn restore(&mut self) {
        self.up = CancellationToken::new();
        self.listen();
    }
}

impl Drop for EngineForwarder {
    fn drop(&mut self) {
        self.cut();
    }
}
