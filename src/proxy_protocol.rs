//! The PROXY protocol header (versions 1 and 2, as HAProxy specifies them)
//! that stayup can send to a backend before the client's bytes.
//!
//! A terminating proxy hides the client: the backend's peer is stayup. With
//! the header the backend learns the client's address and port and the
//! address the client connected to; version 2 also carries the application
//! protocol agreed by ALPN, the server name the client asked for (SNI), the
//! TLS version, and the subject's common name of a verified client
//! certificate, so a backend can log, rate-limit and authorize by them. nginx, HAProxy, Envoy, Postfix, Dovecot and most
//! databases' proxies read it; the backend must be told to expect it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Which header, if any, a listener sends to its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyProtocol {
    #[default]
    None,
    /// The text line: `PROXY TCP4 <client> <local> <port> <port>\r\n`.
    V1,
    /// The binary header, with the TLS details as TLVs.
    V2,
}

impl ProxyProtocol {
    /// `none`, `v1` or `v2`.
    pub fn parse(s: &str) -> Option<ProxyProtocol> {
        match s {
            "none" => Some(ProxyProtocol::None),
            "v1" => Some(ProxyProtocol::V1),
            "v2" => Some(ProxyProtocol::V2),
            _ => None,
        }
    }

    /// The header for `conn`; empty for `None`.
    pub fn header(self, conn: &Connection<'_>) -> Vec<u8> {
        match self {
            ProxyProtocol::None => Vec::new(),
            ProxyProtocol::V1 => v1(conn),
            ProxyProtocol::V2 => v2(conn),
        }
    }
}

impl fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyProtocol::None => "none",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        })
    }
}

/// What the header says about one connection.
#[derive(Debug, Clone, Default)]
pub struct Connection<'a> {
    /// The client's address, as stayup's socket sees it.
    pub client: Option<SocketAddr>,
    /// The address the client connected to.
    pub local: Option<SocketAddr>,
    /// The application protocol agreed by ALPN.
    pub alpn: Option<&'a [u8]>,
    /// The server name the client sent (SNI).
    pub server_name: Option<&'a str>,
    /// `TLSv1.3` or `TLSv1.2`.
    pub tls_version: Option<&'a str>,
    /// The common name of a client certificate that was verified against
    /// the listener's `client_ca`; `None` when none was asked for or sent.
    pub client_cn: Option<String>,
    /// Whether the client presented a verified certificate.
    pub client_cert: bool,
}

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const V2_PROXY: u8 = 0x21;
/// Version 2, command LOCAL: no addresses (the backend uses the socket's).
const V2_LOCAL: u8 = 0x20;
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;
const V2_UNSPEC: u8 = 0x00;
const PP2_TYPE_ALPN: u8 = 0x01;
const PP2_TYPE_AUTHORITY: u8 = 0x02;
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
/// The longest name (server name, common name) sent: DNS names are at most
/// 253 bytes; a longer common name is left out rather than cut.
const NAME_MAX: usize = 255;

/// Both addresses in one family: IPv4 where both are IPv4 (or IPv4-mapped
/// IPv6, as a dual-stack listener sees IPv4 clients), IPv6 otherwise.
fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v4 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => Some(SocketAddr::new(IpAddr::V4(ip), a.port())),
        IpAddr::V6(ip) => ip
            .to_ipv4_mapped()
            .map(|ip| SocketAddr::new(IpAddr::V4(ip), a.port())),
    };
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    match (v4(client), v4(local)) {
        (Some(c), Some(l)) => (c, l),
        _ => (v6(client), v6(local)),
    }
}

fn v1(conn: &Connection<'_>) -> Vec<u8> {
    let (Some(client), Some(local)) = (conn.client, conn.local) else {
        return b"PROXY UNKNOWN\r\n".to_vec();
    };
    let (c, l) = same_family(client, local);
    let family = if c.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        c.ip(),
        l.ip(),
        c.port(),
        l.port()
    )
    .into_bytes()
}

/// Appends one TLV. Values are short (names at most `NAME_MAX`), so the
/// whole header stays far below the 16-bit lengths' limit.
fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

fn v2(conn: &Connection<'_>) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    let (command, family) = match (conn.client, conn.local) {
        (Some(client), Some(local)) => {
            let (c, l) = same_family(client, local);
            match (c.ip(), l.ip()) {
                (IpAddr::V4(ci), IpAddr::V4(li)) => {
                    body.extend_from_slice(&ci.octets());
                    body.extend_from_slice(&li.octets());
                }
                (IpAddr::V6(ci), IpAddr::V6(li)) => {
                    body.extend_from_slice(&ci.octets());
                    body.extend_from_slice(&li.octets());
                }
                // `same_family` returns one family for both.
                _ => {}
            }
            body.extend_from_slice(&c.port().to_be_bytes());
            body.extend_from_slice(&l.port().to_be_bytes());
            (V2_PROXY, if c.is_ipv4() { V2_TCP4 } else { V2_TCP6 })
        }
        _ => (V2_LOCAL, V2_UNSPEC),
    };
    if let Some(alpn) = conn.alpn.filter(|a| a.len() <= NAME_MAX) {
        tlv(&mut body, PP2_TYPE_ALPN, alpn);
    }
    if let Some(name) = conn.server_name.filter(|n| n.len() <= NAME_MAX) {
        tlv(&mut body, PP2_TYPE_AUTHORITY, name.as_bytes());
    }
    let mut ssl = Vec::with_capacity(32);
    let mut client_flags = PP2_CLIENT_SSL;
    if conn.client_cert {
        client_flags |= PP2_CLIENT_CERT_CONN;
    }
    ssl.push(client_flags);
    // verify: 0 means the client's certificate, if it sent one, was
    // verified (stayup refuses the handshake otherwise).
    ssl.extend_from_slice(&0u32.to_be_bytes());
    if let Some(version) = conn.tls_version {
        tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, version.as_bytes());
    }
    if let Some(cn) = conn.client_cn.as_ref().filter(|n| n.len() <= NAME_MAX) {
        tlv(&mut ssl, PP2_SUBTYPE_SSL_CN, cn.as_bytes());
    }
    tlv(&mut body, PP2_TYPE_SSL, &ssl);

    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(command);
    out.push(family);
    // At most 36 bytes of addresses and two names of `NAME_MAX` with their
    // TLV headers: well within 16 bits.
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The subject's common name of a DER certificate, if it has one in UTF-8.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    /// The v1 line for a connection from `client` to `local`.
    fn v1(client: &str, local: &str) -> Vec<u8> {
        ProxyProtocol::V1.header(&Connection {
            client: Some(addr(client)),
            local: Some(addr(local)),
            ..Connection::default()
        })
    }

    #[test]
    fn v1_names_both_ends_in_one_line() {
        assert_eq!(
            v1("192.0.2.10:51234", "127.0.0.1:8443"),
            b"PROXY TCP4 192.0.2.10 127.0.0.1 51234 8443\r\n"
        );
        assert_eq!(
            v1("[2001:db8::1]:40000", "[::1]:8443"),
            b"PROXY TCP6 2001:db8::1 ::1 40000 8443\r\n"
        );
    }

    #[test]
    fn a_dual_stack_listener_reports_ipv4_clients_as_ipv4() {
        assert_eq!(
            v1("[::ffff:192.0.2.10]:51234", "[::ffff:127.0.0.1]:8443"),
            b"PROXY TCP4 192.0.2.10 127.0.0.1 51234 8443\r\n"
        );
        // One end IPv4, the other IPv6: both as IPv6.
        assert_eq!(
            v1("192.0.2.10:51234", "[2001:db8::2]:8443"),
            b"PROXY TCP6 ::ffff:192.0.2.10 2001:db8::2 51234 8443\r\n"
        );
    }

    /// Byte for byte against the layout of the specification (section 2.2).
    #[test]
    fn v2_carries_addresses_server_name_and_tls_details() {
        let conn = Connection {
            client: Some(addr("192.0.2.10:51234")),
            local: Some(addr("127.0.0.1:8443")),
            alpn: Some(b"h2"),
            server_name: Some("web.example.com"),
            tls_version: Some("TLSv1.3"),
            client_cn: Some("alice".to_string()),
            client_cert: true,
        };
        let h = ProxyProtocol::V2.header(&conn);
        let mut want = Vec::new();
        want.extend_from_slice(b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a");
        want.extend_from_slice(&[0x21, 0x11]);
        let addresses = [192, 0, 2, 10, 127, 0, 0, 1, 0xc8, 0x22, 0x20, 0xfb];
        let alpn = [&[0x01, 0x00, 2][..], b"h2"].concat();
        let authority = [&[0x02, 0x00, 15][..], b"web.example.com"].concat();
        let ssl_body = [
            &[0x03, 0, 0, 0, 0][..],
            &[0x21, 0x00, 7],
            b"TLSv1.3",
            &[0x22, 0x00, 5],
            b"alice",
        ]
        .concat();
        let ssl = [&[0x20, 0x00, ssl_body.len() as u8][..], &ssl_body].concat();
        let len = addresses.len() + alpn.len() + authority.len() + ssl.len();
        want.extend_from_slice(&(len as u16).to_be_bytes());
        want.extend_from_slice(&addresses);
        want.extend_from_slice(&alpn);
        want.extend_from_slice(&authority);
        want.extend_from_slice(&ssl);
        assert_eq!(h, want);
    }

    #[test]
    fn v2_ipv6_addresses_take_36_bytes() {
        let conn = Connection {
            client: Some(addr("[2001:db8::1]:40000")),
            local: Some(addr("[::1]:8443")),
            ..Connection::default()
        };
        let h = ProxyProtocol::V2.header(&conn);
        assert_eq!(&h[12..14], &[0x21, 0x21]);
        // 36 bytes of addresses and ports, then the SSL TLV (3 + 5).
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 36 + 8);
        let client: std::net::Ipv6Addr = "2001:db8::1".parse().expect("ip");
        assert_eq!(&h[16..32], &client.octets());
        assert_eq!(&h[48..50], &40000u16.to_be_bytes());
        assert_eq!(&h[50..52], &8443u16.to_be_bytes());
    }

    #[test]
    fn without_addresses_v2_says_local_and_v1_unknown() {
        let conn = Connection::default();
        let h = ProxyProtocol::V2.header(&conn);
        assert_eq!(&h[12..14], &[0x20, 0x00]);
        assert_eq!(ProxyProtocol::V1.header(&conn), b"PROXY UNKNOWN\r\n");
        assert!(ProxyProtocol::None.header(&conn).is_empty());
    }

    #[test]
    fn names_parse_and_print() {
        for p in [ProxyProtocol::None, ProxyProtocol::V1, ProxyProtocol::V2] {
            assert_eq!(ProxyProtocol::parse(&p.to_string()), Some(p));
        }
        assert_eq!(ProxyProtocol::parse("v3"), None);
        assert_eq!(ProxyProtocol::parse("on"), None);
    }

    /// A name too long for the header is left out; the header stays valid.
    #[test]
    fn an_overlong_common_name_is_left_out() {
        let conn = Connection {
            client_cn: Some("x".repeat(70_000)),
            client_cert: true,
            ..Connection::default()
        };
        let h = ProxyProtocol::V2.header(&conn);
        assert_eq!(
            usize::from(u16::from_be_bytes([h[14], h[15]])),
            h.len() - 16
        );
        // Only the SSL TLV's fixed part: flags and verify.
        assert_eq!(&h[16..], &[0x20, 0x00, 0x05, 0x03, 0, 0, 0, 0]);
    }
}
