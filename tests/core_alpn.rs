//! ALPN (`tls.alpn`): the application protocol agreed with each client, as
//! HTTP/2 and gRPC clients require; changed by a reload for new
//! connections while open ones keep theirs; refused when malformed.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::Arc;

/// A client trusting the site that offers `protocols` by ALPN.
fn offering(site: &Site, protocols: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*site.client()).clone();
    cfg.alpn_protocols = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

/// Connects, checks an echo, and returns the stream and the protocol agreed.
async fn agreed(
    bind: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Option<String>,
) {
    let mut s = connected(bind, "localhost", cfg).await;
    echo_round_trip(&mut s, b"ping").await;
    let protocol = s
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    (s, protocol)
}

fn config(bind: SocketAddr, backend: SocketAddr, alpn: &str) -> String {
    simple_config(bind, backend, "a").replacen(
        "      certificates:\n",
        &format!("{alpn}      certificates:\n"),
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_is_agreed_and_a_reload_changes_it() {
    let site = Site::new();
    site.cert("a", &["localhost"]);
    let backend = EchoBackend::start().await;
    let bind = free_addr();
    site.publish(&config(bind, backend.addr, "      alpn: [h2, http/1.1]\n"));
    let mut d = Daemon::start(&site.config).await;

    // The server's order decides among what the client offers.
    let (mut h2, protocol) = agreed(bind, offering(&site, &["http/1.1", "h2"])).await;
    assert_eq!(protocol.as_deref(), Some("h2"));
    let (_, protocol) = agreed(bind, offering(&site, &["http/1.1"])).await;
    assert_eq!(protocol.as_deref(), Some("http/1.1"));
    // A client that offers nothing still connects.
    let (_, protocol) = agreed(bind, offering(&site, &[])).await;
    assert_eq!(protocol, None);
    // A client that offers only protocols the listener does not speak is
    // refused (RFC 7301's no_application_protocol), and nothing else is.
    let refused = tokio::time::timeout(
        WAIT,
        connect(bind, "localhost", offering(&site, &["spdy/3"])),
    )
    .await
    .expect("connect timed out");
    assert!(
        refused.is_err(),
        "a client with no common protocol was served"
    );
    let (_, protocol) = agreed(bind, offering(&site, &["h2"])).await;
    assert_eq!(protocol.as_deref(), Some("h2"));

    let config_path = site.config.to_str().expect("utf-8 path");
    let (code, out, err) = stayup(&["status", "--config", config_path, "--json"]);
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!(
        status["listeners"][0]["alpn"],
        serde_json::json!(["h2", "http/1.1"]),
        "{out}"
    );

    // Turned off by a reload: new connections agree on nothing, and a
    // client offering h2 is no longer refused for want of it.
    site.publish(&config(bind, backend.addr, ""));
    let line = d.reload().await;
    assert!(line.contains("reload committed"), "{line}");
    assert!(line.contains("listener-settings-changed"), "{line}");
    let (_, protocol) = agreed(bind, offering(&site, &["h2"])).await;
    assert_eq!(protocol, None);
    let (_, protocol) = agreed(bind, offering(&site, &["spdy/3"])).await;
    assert_eq!(protocol, None);

    // The connection opened under the first generation keeps its h2.
    echo_round_trip(&mut h2, b"still h2").await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(h2);
    assert!(d.stop().await.success());
}

#[tokio::test]
async fn check_refuses_a_malformed_protocol_list() {
    let site = Site::new();
    site.cert("a", &["localhost"]);
    for (alpn, reason) in [
        ("[h2, h2]", "tls.alpn: protocol \"h2\" is listed twice"),
        ("[h2, \"\"]", "tls.alpn: protocol \"\" is empty"),
    ] {
        site.publish(&config(
            free_addr(),
            free_addr(),
            &format!("      alpn: {alpn}\n"),
        ));
        let (code, _out, err) = check(&site.config);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("stayup.yaml:6:") && err.contains(&format!("listener \"web\": {reason}")),
            "{err}"
        );
    }
}
