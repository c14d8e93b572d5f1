//! `stayup demo`: throwaway CA and certificates, an echo backend, the proxy,
//! and a live rotation every few seconds, published the safe way.
//!
//! The demo is the README's first command, so it must work on a bare
//! machine: everything lives in a temporary folder that is removed on
//! Ctrl-C, and the only thing it binds besides the proxy port is an echo
//! backend on an ephemeral loopback port.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::daemon::Daemon;
use crate::generation::{Shared, Trigger};
use crate::pki::{Ca, LeafSpec};
use crate::reloader::{ReloadHandle, ReloadResult};

/// Runs the demo until Ctrl-C or SIGTERM. Returns the exit status.
pub async fn run(interval: u64, port: u16) -> u8 {
    match demo(interval.max(1), port).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("stayup demo: {e}");
            1
        }
    }
}

struct Folder {
    dir: tempfile::TempDir,
}

impl Folder {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

async fn echo_backend() -> Result<std::net::SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot start the echo backend: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("echo backend: {e}"))?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = w
                    .write_all(b"stayup demo echo backend: type a line\n")
                    .await;
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// Writes a new certificate and key under new names (published files are
/// never changed), then a new top-level file renamed over the old one.
fn publish(
    folder: &Folder,
    ca: &Ca,
    serial: u32,
    bind: &str,
    backend: std::net::SocketAddr,
) -> Result<String, String> {
    let pem = ca.leaf(&LeafSpec::server(&["localhost", "127.0.0.1"]))?;
    let cert = format!("certs/demo-{serial:04}.pem");
    let key = format!("certs/demo-{serial:04}.key");
    pem.write(&folder.path(&cert), &folder.path(&key))
        .map_err(|e| format!("cannot write the certificate: {e}"))?;
    let yaml = format!(
        "# Written by `stayup demo`. Every rotation writes new certificate files\n\
         # and then renames a new copy of this file into place.\n\
         listeners:\n  - name: demo\n    bind: \"{bind}\"\n    backend: \"{backend}\"\n    tls:\n      certificates:\n        - cert: {cert}\n          key: {key}\n\
         control:\n  socket: stayup.sock\n\
         reload:\n  watch: true\n  debounce: 200ms\n\
         log:\n  connections: true\n"
    );
    let tmp = folder.path(".stayup.yaml.tmp");
    write_synced(&tmp, yaml.as_bytes()).map_err(|e| format!("cannot write the config: {e}"))?;
    std::fs::rename(&tmp, folder.path("stayup.yaml"))
        .map_err(|e| format!("cannot rename the config into place: {e}"))?;
    Ok(pem.fingerprint())
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Waits for the watcher to commit what was just published; if it has not
/// within a few debounce periods (no inotify, say), asks explicitly.
async fn await_rotation(handle: &ReloadHandle, before: u64) -> Result<(u64, String), String> {
    let mut outcomes = handle.subscribe();
    let waited = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match outcomes.recv().await {
                Ok(o) if o.generation > before => return Some(o),
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    })
    .await;
    let outcome = match waited {
        Ok(Some(o)) => o,
        _ => handle
            .reload(Trigger::Api)
            .await
            .ok_or("the reloader has stopped")?,
    };
    if outcome.result == ReloadResult::Rejected {
        return Err(outcome.reason.unwrap_or_default());
    }
    let g = handle.current();
    let via = if outcome.trigger == Trigger::Api {
        "explicit reload"
    } else {
        "watcher"
    };
    Ok((g.id, via.to_string()))
}

async fn demo(interval: u64, port: u16) -> Result<(), String> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let folder = Folder {
        dir: tempfile::Builder::new()
            .prefix("stayup-demo-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary folder: {e}"))?,
    };
    std::fs::create_dir_all(folder.path("certs"))
        .map_err(|e| format!("cannot create the certs folder: {e}"))?;
    let ca = Ca::new("stayup demo CA")?;
    std::fs::write(folder.path("ca.pem"), &ca.pem.cert)
        .map_err(|e| format!("cannot write the CA: {e}"))?;
    let backend = echo_backend().await?;

    let bind = format!("127.0.0.1:{port}");
    let mut fingerprint = publish(&folder, &ca, 1, &bind, backend)?;
    let shared = Shared::new().map_err(|e| format!("cannot initialise TLS: {e}"))?;
    let config = folder.path("stayup.yaml");
    let daemon = Daemon::start(&config, Arc::clone(&shared), Vec::new()).map_err(|e| {
        if port != 0 {
            format!("{e}\n(is port {port} in use? try `stayup demo --port 0`)")
        } else {
            e.to_string()
        }
    })?;
    let handle = daemon.handle();
    let triggers = crate::triggers::start(&handle, &daemon.context())
        .await
        .map_err(|e| e.to_string())?;
    triggers
        .start_control(&handle, &daemon.context(), false)
        .await?;
    let local = daemon
        .local_addrs()
        .into_iter()
        .next()
        .map(|(_, l)| l.to_string())
        .unwrap_or(bind.clone());
    // Later files keep the configured address (even `:0`), so the reloader
    // keeps the socket it already has.

    println!();
    println!("stayup demo is running.");
    println!("  folder:   {}", folder.dir.path().display());
    println!("  proxy:    {local} (TLS)  ->  echo backend {backend} (plaintext)");
    println!();
    println!("Connect and type lines; they come back through the proxy:");
    println!(
        "  openssl s_client -connect {local} -servername localhost -CAfile {} -quiet",
        folder.path("ca.pem").display()
    );
    // Started with `cargo run`, `stayup` is not on the PATH: name the binary
    // that is running, so the command can be pasted as it is.
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "stayup".to_string());
    println!("In another terminal, watch the daemon:");
    println!("  {exe} status --config {}", config.display());
    println!();
    println!(
        "Every {interval} s a new certificate is published (new files, then a new stayup.yaml renamed into place)."
    );
    println!(
        "Your open session keeps the generation that accepted it; new connections get the new certificate."
    );
    println!(
        "When a session ends, its log line names the generation that accepted it (log.connections)."
    );
    println!("Press Ctrl-C to stop and remove the folder.");
    println!();
    println!(
        "generation {}: certificate sha256 {}",
        handle.current().id,
        &fingerprint[..16]
    );

    let mut serial = 1;
    let stop = crate::daemon::terminate_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_secs(interval)) => {}
        }
        serial += 1;
        let before = handle.current().id;
        fingerprint = publish(&folder, &ca, serial, &bind, backend)?;
        match await_rotation(&handle, before).await {
            Ok((generation, via)) => {
                let older: usize = shared
                    .live_generations()
                    .iter()
                    .filter(|g| g.id != generation)
                    .map(|g| g.connections())
                    .sum();
                println!(
                    "generation {generation}: certificate sha256 {} (committed by the {via}; {older} connection(s) still on older generations)",
                    &fingerprint[..16]
                );
            }
            Err(reason) => println!("rotation {serial} was rejected: {reason}"),
        }
    }
    println!("stopping; removing {}", folder.dir.path().display());
    triggers.shutdown().await;
    daemon.stop(crate::daemon::terminate_signal()).await;
    drop(folder);
    Ok(())
}
