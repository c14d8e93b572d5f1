//! The ceiling: what rustls itself does on one core with no sockets, so that
//! stayup's figures can be read as a share of what the TLS library allows.
//!
//! Client and server run in one thread, pinned to the proxy's CPU while no
//! proxy runs; only the server's side is timed (thread CPU time around each
//! server call), since a proxy is a server.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::time::{ClockId, clock_gettime};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::{ClientConnection, ServerConfig, ServerConnection};

use crate::tls::CertFiles;

#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    /// Server handshakes per server CPU-second, no tickets.
    pub handshakes_per_cpu_s: f64,
    /// The same, sending two TLS 1.3 tickets per handshake (rustls's default).
    pub handshakes_per_cpu_s_tickets: f64,
    /// AES-256-GCM decryption of 16 KiB records by the server, MB/s of plaintext.
    pub decrypt_mb_s: f64,
    /// The AEAD alone: the same records opened in place by rustls's record
    /// decrypter, with none of the connection's buffering or copies.
    pub aead_mb_s: f64,
}

fn thread_cpu() -> Duration {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

fn server_config(c: &CertFiles, tickets: bool) -> Result<Arc<ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&c.cert)?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&c.key)?;
    // stayup's provider: aws-lc-rs, with the TLS 1.3 key schedule of SHA-384
    // suites over prepared HMAC keys (stayup's `keyschedule`), so that the
    // ceiling is what the library allows stayup's own handshakes.
    let provider = Arc::new(stayup::keyschedule::prepared(
        &rustls::crypto::aws_lc_rs::default_provider(),
    ));
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    if tickets {
        cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    } else {
        cfg.send_tls13_tickets = 0;
    }
    Ok(Arc::new(cfg))
}

/// Moves everything `from` has to send into `to`; timed when `to` is the server.
fn client_to_server(
    c: &mut ClientConnection,
    s: &mut ServerConnection,
    buf: &mut Vec<u8>,
    spent: &mut Duration,
) -> Result<()> {
    buf.clear();
    while c.wants_write() {
        c.write_tls(buf)?;
    }
    if buf.is_empty() {
        return Ok(());
    }
    let t = thread_cpu();
    let mut rd = &buf[..];
    while !rd.is_empty() {
        s.read_tls(&mut rd)?;
        s.process_new_packets()?;
    }
    *spent += thread_cpu() - t;
    Ok(())
}

fn server_to_client(
    s: &mut ServerConnection,
    c: &mut ClientConnection,
    buf: &mut Vec<u8>,
    spent: &mut Duration,
) -> Result<()> {
    buf.clear();
    let t = thread_cpu();
    while s.wants_write() {
        s.write_tls(buf)?;
    }
    *spent += thread_cpu() - t;
    let mut rd = &buf[..];
    while !rd.is_empty() {
        c.read_tls(&mut rd)?;
        c.process_new_packets()?;
    }
    Ok(())
}

fn handshakes(cert: &CertFiles, tickets: bool, run: Duration) -> Result<f64> {
    let scfg = server_config(cert, tickets)?;
    let ccfg = crate::tls::client_config()?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut spent = Duration::ZERO;
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < run {
        let mut c = ClientConnection::new(ccfg.clone(), crate::tls::server_name())?;
        let t = thread_cpu();
        let mut s = ServerConnection::new(scfg.clone())?;
        spent += thread_cpu() - t;
        let mut rounds = 0;
        while c.is_handshaking() || s.is_handshaking() || s.wants_write() {
            client_to_server(&mut c, &mut s, &mut buf, &mut spent)?;
            server_to_client(&mut s, &mut c, &mut buf, &mut spent)?;
            rounds += 1;
            if rounds > 10 {
                bail!("in-memory handshake did not finish");
            }
        }
        n += 1;
    }
    Ok(n as f64 / spent.as_secs_f64())
}

fn decrypt(cert: &CertFiles, run: Duration) -> Result<f64> {
    let scfg = server_config(cert, false)?;
    let ccfg = crate::tls::client_config()?;
    let mut c = ClientConnection::new(ccfg, crate::tls::server_name())?;
    let mut s = ServerConnection::new(scfg)?;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut ignore = Duration::ZERO;
    while c.is_handshaking() || s.is_handshaking() {
        client_to_server(&mut c, &mut s, &mut buf, &mut ignore)?;
        server_to_client(&mut s, &mut c, &mut buf, &mut ignore)?;
    }
    let chunk = vec![7u8; 16 * 1024];
    let mut plain = vec![0u8; 64 * 1024];
    let mut spent = Duration::ZERO;
    let mut bytes = 0u64;
    let start = Instant::now();
    while start.elapsed() < run {
        buf.clear();
        for _ in 0..4 {
            c.writer().write_all(&chunk)?;
            while c.wants_write() {
                c.write_tls(&mut buf)?;
            }
        }
        let t = thread_cpu();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd)?;
            s.process_new_packets()?;
            loop {
                match s.reader().read(&mut plain) {
                    Ok(0) => break,
                    Ok(k) => bytes += k as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        spent += thread_cpu() - t;
    }
    Ok(bytes as f64 / 1e6 / spent.as_secs_f64())
}

/// AES-256-GCM alone, MB/s of plaintext: rustls's TLS 1.3 record decrypter
/// of the suite the benchmark negotiates, opening one 16 KiB record in place
/// again and again (restored between openings, untimed). What no proxy that
/// decrypts in user space can avoid spending on the bulk test.
fn aead(run: Duration) -> Result<f64> {
    use rustls::crypto::cipher::{
        AeadKey, InboundOpaqueMessage, Iv, OutboundChunks, OutboundPlainMessage,
    };
    use rustls::{ContentType, ProtocolVersion, SupportedCipherSuite};
    let SupportedCipherSuite::Tls13(suite) =
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384
    else {
        bail!("TLS13_AES_256_GCM_SHA384 is not a TLS 1.3 suite");
    };
    let (key, iv) = ([7u8; 32], [9u8; 12]);
    let plain = vec![7u8; 16 * 1024];
    let sealed = suite
        .aead_alg
        .encrypter(AeadKey::from(key), Iv::new(iv))
        .encrypt(
            OutboundPlainMessage {
                typ: ContentType::ApplicationData,
                version: ProtocolVersion::TLSv1_2,
                payload: OutboundChunks::Single(&plain),
            },
            0,
        )?
        .encode();
    let mut dec = suite.aead_alg.decrypter(AeadKey::from(key), Iv::new(iv));
    // The record without its 5-byte header.
    let body = sealed.get(5..).context("sealed record too short")?;
    let mut work = body.to_vec();
    let (mut spent, mut bytes) = (Duration::ZERO, 0u64);
    let start = Instant::now();
    while start.elapsed() < run {
        work.copy_from_slice(body);
        let t = thread_cpu();
        let msg = InboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            &mut work,
        );
        let opened = dec.decrypt(msg, 0)?;
        spent += thread_cpu() - t;
        if opened.payload.len() != plain.len() {
            bail!("opened {} bytes of {}", opened.payload.len(), plain.len());
        }
        bytes += plain.len() as u64;
    }
    Ok(bytes as f64 / 1e6 / spent.as_secs_f64())
}

/// Measures the ceiling on the proxy's CPU, in a thread of its own.
pub fn measure(cert: &CertFiles, run: Duration) -> Result<Ceiling> {
    let cert = cert.clone();
    std::thread::spawn(move || -> Result<Ceiling> {
        crate::pin(crate::systems::proxy_cpu())?;
        Ok(Ceiling {
            handshakes_per_cpu_s: handshakes(&cert, false, run)?,
            handshakes_per_cpu_s_tickets: handshakes(&cert, true, run)?,
            decrypt_mb_s: decrypt(&cert, run)?,
            aead_mb_s: aead(run)?,
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("ceiling thread panicked"))?
    .context("ceiling")
}
