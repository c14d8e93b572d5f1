//! The PROXY protocol header stayup sends to a backend
//! (`backend_proxy_protocol`), read by a backend that decodes it as the
//! specification describes: the client's real address and port, the
//! address it connected to, and in version 2 the server name, the TLS
//! version and a verified client certificate's common name; switched on,
//! changed and refused by reloads, with connections already open untouched.

mod common;
use common::*;

use std::net::SocketAddr;

use stayup::pki::{Ca, LeafSpec};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A backend that reads a PROXY protocol header (or none: it only waits for
/// one when the first bytes say so), sends back one line describing what
/// it read, then echoes.
struct HeaderBackend {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HeaderBackend {
    async fn start() -> HeaderBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = serve(s).await;
                });
            }
        });
        HeaderBackend { addr, task }
    }
}

impl Drop for HeaderBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

async fn serve(s: TcpStream) -> std::io::Result<()> {
    let mut s = BufReader::new(s);
    let first = s.fill_buf().await?.to_vec();
    let description = if first.starts_with(b"PROXY ") {
        let mut line = String::new();
        s.read_line(&mut line).await?;
        assert!(
            line.ends_with("\r\n"),
            "a v1 header ends with CRLF: {line:?}"
        );
        format!("v1 {}", line.trim_end())
    } else if first.first() == Some(&b'\r') {
        let mut fixed = [0u8; 16];
        s.read_exact(&mut fixed).await?;
        assert_eq!(&fixed[..12], V2_SIGNATURE, "v2 signature");
        let mut body = vec![0u8; usize::from(u16::from_be_bytes([fixed[14], fixed[15]]))];
        s.read_exact(&mut body).await?;
        decode_v2(fixed[12], fixed[13], &body)
    } else {
        "none".to_string()
    };
    s.get_mut()
        .write_all(format!("{description}\n").as_bytes())
        .await?;
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        s.get_mut().write_all(&buf[..n]).await?;
    }
}

/// `v2 cmd=21 fam=11 src=IP:PORT dst=IP:PORT authority=... ssl=FLAGS/VERIFY version=... cn=...`
fn decode_v2(ver_cmd: u8, family: u8, body: &[u8]) -> String {
    let mut out = format!("v2 cmd={ver_cmd:02x} fam={family:02x}");
    let (addrs, mut tlvs) = match family {
        0x11 => {
            let ip = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            out.push_str(&format!(
                " src={}:{} dst={}:{}",
                ip(&body[0..4]),
                port(&body[8..10]),
                ip(&body[4..8]),
                port(&body[10..12])
            ));
            (12, &body[12..])
        }
        0x21 => (36, &body[36..]),
        _ => (0, body),
    };
    assert!(body.len() >= addrs, "v2 body shorter than its addresses");
    while tlvs.len() >= 3 {
        let (kind, len) = (tlvs[0], usize::from(u16::from_be_bytes([tlvs[1], tlvs[2]])));
        let value = &tlvs[3..3 + len];
        match kind {
            0x01 => out.push_str(&format!(" alpn={}", String::from_utf8_lossy(value))),
            0x02 => out.push_str(&format!(" authority={}", String::from_utf8_lossy(value))),
            0x20 => {
                out.push_str(&format!(
                    " ssl={:02x}/{}",
                    value[0],
                    u32::from_be_bytes([value[1], value[2], value[3], value[4]])
                ));
                let mut sub = &value[5..];
                while sub.len() >= 3 {
                    let (k, l) = (sub[0], usize::from(u16::from_be_bytes([sub[1], sub[2]])));
                    let v = String::from_utf8_lossy(&sub[3..3 + l]);
                    match k {
                        0x21 => out.push_str(&format!(" version={v}")),
                        0x22 => out.push_str(&format!(" cn={v}")),
                        _ => out.push_str(&format!(" sub{k:02x}={v}")),
                    }
                    sub = &sub[3 + l..];
                }
            }
            _ => out.push_str(&format!(" tlv{kind:02x}")),
        }
        tlvs = &tlvs[3 + len..];
    }
    assert!(tlvs.is_empty(), "trailing bytes after the TLVs");
    out
}

/// Connects, sends a first message (the backend decides from the first
/// bytes whether a header came), and returns the stream, the client's own
/// address, and the backend's description of the header it got.
async fn through(
    bind: SocketAddr,
    cfg: std::sync::Arc<rustls::ClientConfig>,
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    SocketAddr,
    String,
) {
    let mut s = connected(bind, "localhost", cfg).await;
    let me = s.get_ref().0.local_addr().expect("client address");
    s.write_all(b"first\n").await.expect("write");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        tokio::time::timeout(WAIT, s.read_exact(&mut byte))
            .await
            .expect("the backend's description timed out")
            .expect("read description");
        line.push(byte[0]);
    }
    let mut echoed = [0u8; 6];
    tokio::time::timeout(WAIT, s.read_exact(&mut echoed))
        .await
        .expect("echo timed out")
        .expect("read echo");
    assert_eq!(
        &echoed, b"first\n",
        "the client's first bytes after the header"
    );
    let line = String::from_utf8(line).expect("utf-8");
    (s, me, line.trim_end().to_string())
}

fn config(bind: SocketAddr, backend: SocketAddr, setting: &str) -> String {
    simple_config(bind, backend, "a").replacen("    tls:\n", &format!("{setting}    tls:\n"), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_learns_the_client_and_reloads_switch_the_header() {
    let site = Site::new();
    site.cert("a", &["localhost"]);
    let backend = HeaderBackend::start().await;
    let bind = free_addr();
    site.publish(&config(bind, backend.addr, ""));
    let mut d = Daemon::start(&site.config).await;

    // Off by default: the backend gets the client's bytes and nothing else.
    let (mut plain, _, seen) = through(bind, site.client()).await;
    assert_eq!(seen, "none");

    site.publish(&config(
        bind,
        backend.addr,
        "    backend_proxy_protocol: v2\n",
    ));
    let line = d.reload().await;
    assert!(line.contains("reload committed"), "{line}");
    assert!(line.contains("listener-settings-changed"), "{line}");
    let (mut v2, me, seen) = through(bind, site.client()).await;
    assert_eq!(
        seen,
        format!(
            "v2 cmd=21 fam=11 src={me} dst={bind} authority=localhost ssl=01/0 version=TLSv1.3"
        )
    );
    echo_round_trip(&mut v2, b"after a v2 header").await;

    site.publish(&config(
        bind,
        backend.addr,
        "    backend_proxy_protocol: v1\n",
    ));
    let line = d.reload().await;
    assert!(line.contains("reload committed"), "{line}");
    let (mut v1, me, seen) = through(bind, site.client()).await;
    assert_eq!(
        seen,
        format!(
            "v1 PROXY TCP4 {} {} {} {}",
            me.ip(),
            bind.ip(),
            me.port(),
            bind.port()
        )
    );
    echo_round_trip(&mut v1, b"after a v1 header").await;
    let config_path = site.config.to_str().expect("utf-8 path");
    let (code, out, err) = stayup(&["status", "--config", config_path]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{bind} -> {} (PROXY protocol v1)", backend.addr)),
        "{out}"
    );
    let (code, out, err) = stayup(&["status", "--config", config_path, "--json"]);
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!(
        status["listeners"][0]["backend_proxy_protocol"], "v1",
        "{out}"
    );

    // A value stayup does not know is refused; the last good one serves on.
    site.publish(&config(
        bind,
        backend.addr,
        "    backend_proxy_protocol: v3\n",
    ));
    let line = d.reload().await;
    assert!(line.contains("reload rejected"), "{line}");
    let reason = rejection_reason(&line);
    assert!(
        reason.contains("stayup.yaml:5:")
            && reason
                .contains("listener \"web\": backend_proxy_protocol \"v3\" is not none, v1 or v2"),
        "{reason}"
    );
    let (_, _, seen) = through(bind, site.client()).await;
    assert!(seen.starts_with("v1 PROXY TCP4 "), "{seen}");

    // Connections opened under earlier generations carry on as they were.
    echo_round_trip(&mut plain, b"opened with no header").await;
    echo_round_trip(&mut v2, b"opened with v2").await;
    echo_round_trip(&mut v1, b"opened with v1").await;
    // Closed first, or the stop would wait for them (shutdown.timeout).
    drop((plain, v2, v1));
    assert!(d.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_names_the_protocol_and_a_verified_client_certificate() {
    let site = Site::new();
    site.cert("a", &["localhost"]);
    let clients = Ca::new("stayup test client CA").expect("CA");
    site.write("ca/clients.pem", &clients.pem.cert);
    let mut spec = LeafSpec::server(&["alice.example.test"]);
    spec.common_name = "alice".to_string();
    spec.client = true;
    let alice = clients.leaf(&spec).expect("client cert");
    let backend = HeaderBackend::start().await;
    let bind = free_addr();
    site.publish(
        &config(bind, backend.addr, "    backend_proxy_protocol: v2\n").replacen(
            "      certificates:\n",
            "      client_ca: ca/clients.pem\n      alpn: [h2]\n      certificates:\n",
            1,
        ),
    );
    let d = Daemon::start(&site.config).await;
    let mut client = (*client_config(&site.ca.pem.cert, Some(&alice))).clone();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let (mut s, me, seen) = through(bind, std::sync::Arc::new(client)).await;
    assert_eq!(
        seen,
        format!(
            "v2 cmd=21 fam=11 src={me} dst={bind} alpn=h2 authority=localhost ssl=03/0 version=TLSv1.3 cn=alice"
        )
    );
    echo_round_trip(&mut s, b"alice").await;
    drop(s);
    assert!(d.stop().await.success());
}

/// `stayup check` names the file, the line and the listener.
#[tokio::test]
async fn check_refuses_an_unknown_version() {
    let site = Site::new();
    site.cert("a", &["localhost"]);
    site.publish(&config(
        free_addr(),
        free_addr(),
        "    backend_proxy_protocol: \"2\"\n",
    ));
    let (code, _out, err) = check(&site.config);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("stayup.yaml:5:")
            && err.contains("listener \"web\": backend_proxy_protocol \"2\" is not none, v1 or v2"),
        "{err}"
    );
}
