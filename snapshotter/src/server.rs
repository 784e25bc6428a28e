//! The gRPC endpoint: containerd's snapshots service on a unix socket, until SIGTERM or
//! SIGINT.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use containerd_snapshots::tonic::transport::Server;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;
use tokio_stream::wrappers::UnixListenerStream;

use crate::error::{Error, Result};
use crate::service::UnionSnapshotter;

/// How long running requests get to finish after SIGTERM.
const GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Binds `address`, replacing a stale socket but never one a live process still serves.
fn bind(address: &Path) -> Result<UnixListener> {
    if address.exists() {
        if std::os::unix::net::UnixStream::connect(address).is_ok() {
            return Err(Error::FailedPrecondition(format!(
                "{} is served by another process (a running snapshotter?): stop it or give \
                 another --address",
                address.display()
            )));
        }
        std::fs::remove_file(address)
            .map_err(|e| Error::io("removing the stale socket", address, e))?;
    }
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    }
    let l = UnixListener::bind(address).map_err(|e| Error::io("listening on", address, e))?;
    // Only root (containerd) may change snapshots.
    std::fs::set_permissions(address, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("restricting", address, e))?;
    Ok(l)
}

async fn terminated() -> io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Serves `snapshotter` at `address` until SIGTERM or SIGINT, then removes the socket.
pub async fn serve(address: &Path, snapshotter: UnionSnapshotter) -> Result<()> {
    let listener = bind(address)?;
    log::info!(
        "serving containerd's snapshots API on {}",
        address.display()
    );
    let stopping = Arc::new(Notify::new());
    let shutdown = {
        let stopping = stopping.clone();
        async move {
            if let Err(e) = terminated().await {
                log::error!("cannot wait for SIGTERM ({e}): stopping now");
            }
            log::info!("stopping: signal received");
            stopping.notify_one();
        }
    };
    let serving = Server::builder()
        .add_service(containerd_snapshots::server(Arc::new(snapshotter)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown);
    // A graceful shutdown waits for every connection to close, and containerd keeps its
    // connection open: give running requests a moment, then stop. The store is transactional,
    // so a request cut short leaves nothing half done.
    let result = tokio::select! {
        r = serving => r.map_err(|e| {
            Error::Internal(format!("the gRPC server on {} failed: {e}", address.display()))
        }),
        _ = async {
            stopping.notified().await;
            tokio::time::sleep(GRACE).await;
        } => Ok(()),
    };
    let _ = std::fs::remove_file(address);
    result
}
