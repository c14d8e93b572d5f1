//! Measures how long a certificate rotation takes to reach clients when it
//! is published by renaming a new top-level file into place and picked up
//! by the watch: from the `rename(2)` to the first completed TLS handshake
//! that presents the new certificate, over 100 rotations with the default
//! 200 ms debounce.
//!
//! ```text
//! cargo run --release --example reload_latency
//! ```
//!
//! The daemon runs in this process (the same `daemon::run` the binary
//! runs), on loopback, with a throwaway CA. Probing starts 15 ms before the
//! debounce ends: the debounce is a quiet period, so nothing can change
//! earlier, and probing from the rename on would only load the machine the
//! measurement runs on. A rotation seen by the very first probe is counted
//! as "early" (it would mean the debounce did not hold).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use stayup::pki::{Ca, LeafSpec, Pem};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

const ROTATIONS: usize = 100;
const DEBOUNCE: Duration = Duration::from_millis(200);
const PROBE_LEAD: Duration = Duration::from_millis(15);
const ALLOWANCE: Duration = Duration::from_millis(20);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(measure())
}

async fn measure() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("stayup latency CA")?;
    let certs: Vec<Pem> = ["a", "b"]
        .iter()
        .map(|n| -> Result<Pem, Box<dyn std::error::Error>> {
            let pem = ca.leaf(&LeafSpec::server(&["localhost"]))?;
            pem.write(
                &dir.path().join(format!("{n}.pem")),
                &dir.path().join(format!("{n}.key")),
            )?;
            Ok(pem)
        })
        .collect::<Result<_, _>>()?;

    let backend = TcpListener::bind("127.0.0.1:0").await?;
    let backend_addr = backend.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = backend.accept().await {
            drop(s);
        }
    });
    let bind: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let config = dir.path().join("stayup.yaml");
    let yaml = |n: usize, cert: &str| {
        format!(
            "# rotation {n}\nlisteners:\n  - name: web\n    bind: \"{bind}\"\n    backend: \"{backend_addr}\"\n    tls:\n      certificates:\n        - cert: {cert}.pem\n          key: {cert}.key\nreload:\n  watch: true\n  debounce: {}ms\nlog:\n  level: warn\n",
            DEBOUNCE.as_millis()
        )
    };
    publish(&config, &yaml(0, "a"))?;

    let shared = stayup::Shared::new()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(stayup::daemon::run(
        config.clone(),
        shared,
        Vec::new(),
        async move {
            let _ = stopped.await;
        },
    ));

    let client = client_config(&ca.pem.cert)?;
    let fps: Vec<String> = certs.iter().map(Pem::fingerprint).collect();
    // Ready once it serves the first certificate.
    let ready = Instant::now();
    loop {
        if let Ok(fp) = handshake(bind, client.clone()).await
            && fp == fps[0]
        {
            break;
        }
        if ready.elapsed() > Duration::from_secs(20) {
            return Err("the daemon did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut latencies = Vec::with_capacity(ROTATIONS);
    let mut early = 0;
    for n in 1..=ROTATIONS {
        let (name, want) = if n % 2 == 1 {
            ("b", &fps[1])
        } else {
            ("a", &fps[0])
        };
        let tmp = dir.path().join(".stayup.yaml.new");
        std::fs::write(&tmp, yaml(n, name))?;
        let renamed = Instant::now();
        std::fs::rename(&tmp, &config)?;
        tokio::time::sleep_until((renamed + DEBOUNCE - PROBE_LEAD).into()).await;
        let mut first = true;
        loop {
            let fp = handshake(bind, client.clone()).await?;
            if &fp == want {
                latencies.push(renamed.elapsed());
                if first {
                    early += 1;
                }
                break;
            }
            first = false;
            if renamed.elapsed() > Duration::from_secs(10) {
                return Err(format!("rotation {n} was not picked up within 10 s").into());
            }
        }
    }
    let _ = stop.send(());
    let _ = daemon.await;

    latencies.sort();
    let pct = |p: f64| {
        let i = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[i.clamp(1, latencies.len()) - 1]
    };
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    let p99 = pct(99.0);
    let target = DEBOUNCE + ALLOWANCE;
    println!("rename -> first handshake presenting the new certificate");
    println!("{:<12} {}", "rotations", latencies.len());
    println!("{:<12} {}", "debounce", ms(DEBOUNCE));
    println!("{:<12} {}", "min", ms(latencies[0]));
    println!("{:<12} {}", "p50", ms(pct(50.0)));
    println!("{:<12} {}", "p90", ms(pct(90.0)));
    println!("{:<12} {}", "p99", ms(p99));
    println!("{:<12} {}", "max", ms(latencies[latencies.len() - 1]));
    println!("{:<12} {early}", "early");
    println!(
        "{:<12} p99 <= {}: {}",
        "target",
        ms(target),
        if p99 <= target { "met" } else { "MISSED" }
    );
    Ok(())
}

fn publish(config: &Path, yaml: &str) -> std::io::Result<()> {
    let tmp = config.with_extension("yaml.new");
    std::fs::write(&tmp, yaml)?;
    std::fs::rename(&tmp, config)
}

fn client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, Box<dyn std::error::Error>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// One TLS handshake; the SHA-256 of the certificate presented.
async fn handshake(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> Result<String, Box<dyn std::error::Error>> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = TlsConnector::from(client)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate presented")?;
    Ok(hex::encode(stayup::material::sha256(leaf.as_ref())))
}
