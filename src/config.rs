//! The top-level configuration file: bytes -> validated [`Config`].
//!
//! This layer only parses and checks what can be checked from the file alone
//! (syntax, types, unknown and duplicate keys, addresses, durations, unique
//! names). It never touches the files the configuration references; that is
//! [`crate::material`]'s job. Keeping the layers apart means `stayup check`,
//! a reload and the library all give the same answer for the same bytes.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::proxy_protocol::ProxyProtocol;

/// The largest top-level file stayup will read. A configuration is a few
/// kilobytes; anything near this is a mistake or an attack, and reading it
/// whole into memory on every reload would be the real harm.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Why a configuration was refused. Every variant names the file; the ones
/// that come from a place in the file carry its line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read at all.
    Read { file: PathBuf, reason: String },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    TooLarge { file: PathBuf, size: u64 },
    /// The file is not UTF-8 text.
    NotUtf8 { file: PathBuf, offset: usize },
    /// The file is empty (or only comments and white space).
    Empty { file: PathBuf },
    /// YAML syntax, types, unknown or duplicate keys, resource budgets.
    Syntax {
        file: PathBuf,
        line: Option<u64>,
        column: Option<u64>,
        reason: String,
    },
    /// The YAML is well-formed but a value is not acceptable.
    Invalid {
        file: PathBuf,
        line: Option<u64>,
        column: Option<u64>,
        reason: String,
    },
}

impl ConfigError {
    /// The file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            ConfigError::Read { file, .. }
            | ConfigError::TooLarge { file, .. }
            | ConfigError::NotUtf8 { file, .. }
            | ConfigError::Empty { file }
            | ConfigError::Syntax { file, .. }
            | ConfigError::Invalid { file, .. } => file,
        }
    }

    /// A short stable name for the kind of error, for metrics and tests.
    pub fn class(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "config-read",
            ConfigError::TooLarge { .. } => "config-too-large",
            ConfigError::NotUtf8 { .. } => "config-not-utf8",
            ConfigError::Empty { .. } => "config-empty",
            ConfigError::Syntax { .. } => "config-syntax",
            ConfigError::Invalid { .. } => "config-invalid",
        }
    }

    fn invalid(file: &Path, at: Option<(u64, u64)>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            file: file.to_path_buf(),
            line: at.map(|a| a.0),
            column: at.map(|a| a.1),
            reason: reason.into(),
        }
    }
}

fn write_place(
    f: &mut fmt::Formatter<'_>,
    file: &Path,
    line: &Option<u64>,
    column: &Option<u64>,
) -> fmt::Result {
    write!(f, "{}", file.display())?;
    if let Some(line) = line {
        write!(f, ":{line}")?;
        if let Some(column) = column {
            write!(f, ":{column}")?;
        }
    }
    Ok(())
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { file, reason } => {
                write!(f, "{}: cannot read configuration: {reason}", file.display())
            }
            ConfigError::TooLarge { file, size } => write!(
                f,
                "{}: configuration is {size} bytes, larger than the {MAX_CONFIG_BYTES}-byte limit",
                file.display()
            ),
            ConfigError::NotUtf8 { file, offset } => write!(
                f,
                "{}: configuration is not UTF-8 text (invalid byte at offset {offset})",
                file.display()
            ),
            ConfigError::Empty { file } => write!(
                f,
                "{}: configuration is empty (at least one listener is required)",
                file.display()
            ),
            ConfigError::Syntax {
                file,
                line,
                column,
                reason,
            } => {
                write_place(f, file, line, column)?;
                write!(f, ": invalid YAML configuration: {reason}")
            }
            ConfigError::Invalid {
                file,
                line,
                column,
                reason,
            } => {
                write_place(f, file, line, column)?;
                write!(f, ": {reason}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// A validated configuration. Paths are absolute (resolved against the
/// configuration file's folder); addresses are parsed; durations are typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The path the configuration was read from, as given.
    pub path: PathBuf,
    pub listeners: Vec<ListenerConfig>,
    pub control: ControlConfig,
    pub admin: Option<AdminConfig>,
    pub reload: ReloadConfig,
    pub drain: DrainConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub limits: LimitsConfig,
    pub tcp_keepalive: KeepaliveConfig,
    /// Served certificates this close to their end are warned about (log,
    /// status, `stayup check`). Top-level `warn_expiry`, default 14 days.
    pub warn_expiry: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub backend: Backend,
    pub tls: TlsConfig,
    /// At most this many connections open at once on this listener (0 = no limit).
    pub max_connections: usize,
    /// The PROXY protocol header sent to the backend before the client's bytes.
    pub backend_proxy_protocol: ProxyProtocol,
}

/// A plaintext TCP upstream: either a literal socket address or a host name
/// and port resolved at connect time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Backend {
    /// Parses `host:port`, `1.2.3.4:port` or `[::1]:port`.
    pub fn parse(s: &str) -> Result<Backend, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(format!("backend {s:?} has port 0"));
            }
            return Ok(Backend {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("backend {s:?} is not host:port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("backend {s:?} has an invalid port {port:?}"))?;
        if port == 0 {
            return Err(format!("backend {s:?} has port 0"));
        }
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid_host {
            return Err(format!("backend {s:?} has an invalid host {host:?}"));
        }
        Ok(Backend {
            host: host.to_string(),
            port,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub certificates: Vec<CertificateRef>,
    pub client_ca: Option<PathBuf>,
    /// A client that has not finished its handshake after this long is dropped.
    pub handshake_timeout: Duration,
    /// Whether clients may resume sessions (TLS 1.3 tickets, TLS 1.2 session
    /// IDs and tickets). Off, every connection does a full handshake and the
    /// server sends no tickets: for policies that want no resumption state,
    /// and for like-for-like comparisons with servers configured that way.
    pub session_resumption: bool,
    /// Application protocols offered by ALPN, most preferred first (`h2`,
    /// `http/1.1`): gRPC and HTTP/2 clients insist on `h2`. Empty: no ALPN.
    pub alpn: Vec<String>,
    /// The oldest TLS version a client may use.
    pub min_version: TlsVersion,
    /// The cipher suites served (IANA names), most preferred first. Empty:
    /// stayup's choice (see `suites`).
    pub cipher_suites: Vec<String>,
    /// The key exchange groups accepted (stayup's names, see `groups`), as
    /// written. Empty: rustls's default set.
    pub groups: Vec<String>,
}

/// A TLS version stayup can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// `1.2` or `1.3` (also `TLSv1.2`, `TLSv1.3`, the names status and
    /// other servers print).
    pub fn parse(s: &str) -> Option<TlsVersion> {
        let s = s.trim();
        let s = s
            .strip_prefix("TLSv")
            .or_else(|| s.strip_prefix("tlsv"))
            .unwrap_or(s);
        match s {
            "1.2" => Some(TlsVersion::Tls12),
            "1.3" => Some(TlsVersion::Tls13),
            _ => None,
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRef {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Names this certificate must cover; a reload that would serve a
    /// certificate without them is rejected.
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub allow_remote: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadConfig {
    pub watch: bool,
    pub debounce: Duration,
    /// Re-hash the top-level file this often (0 = never).
    pub poll: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainConfig {
    /// Connections of a superseded generation are closed after this long (zero = never).
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownConfig {
    /// On SIGTERM/SIGINT open connections may finish for this long.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
    /// One line per connection when it ends (client, SNI, TLS version,
    /// generation, bytes, duration, how it ended), like HAProxy's `tcplog`
    /// or nginx's stream `access_log`.
    pub connections: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// At most this many connections open at once over all listeners (0 = no limit).
    pub max_connections: usize,
    pub backend_connect_timeout: Duration,
    /// Close a connection with no traffic in either direction for this long (zero = never).
    pub idle_timeout: Duration,
    /// Refuse private keys readable by group or others (but for root-owned
    /// keys its group may read) unless this is set.
    pub allow_insecure_key_permissions: bool,
}

/// TCP keepalive on both sockets of every connection, the client's and the
/// backend's. Long-lived connections are what stayup is for, and a peer
/// that vanished without a FIN (a laptop shut, a NAT or firewall entry
/// dropped, a host powered off) would otherwise hold its connection, the
/// one to the backend, and with them its generation, for ever. Probes also
/// keep NAT and load-balancer idle timers from expiring on connections
/// that are merely quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveConfig {
    /// Probe a peer that has sent nothing for this long; zero = off.
    pub idle: Duration,
    /// Time between unanswered probes.
    pub interval: Duration,
    /// Unanswered probes after which the kernel closes the connection.
    pub probes: u32,
    /// How long sent data may stay unacknowledged before the kernel closes
    /// the connection (`TCP_USER_TIMEOUT`); zero = the kernel's default.
    /// Keepalive sends no probe while data is in flight, so without this a
    /// peer that vanished with data on its way to it is given up on only
    /// after TCP's retransmissions (about 15 minutes on Linux). By default
    /// it is the time keepalive takes, so that both cases end alike.
    pub user_timeout: Duration,
}

impl KeepaliveConfig {
    pub const DEFAULT: KeepaliveConfig = KeepaliveConfig {
        idle: Duration::from_secs(120),
        interval: Duration::from_secs(30),
        probes: 4,
        user_timeout: Duration::from_secs(120 + 30 * 4),
    };

    pub fn enabled(&self) -> bool {
        !self.idle.is_zero()
    }

    /// What keepalive takes to give up on a silent peer: `idle + interval
    /// × probes` (zero when off), the default `user_timeout`.
    pub fn keepalive_time(&self) -> Duration {
        if !self.enabled() {
            return Duration::ZERO;
        }
        self.idle + self.interval * self.probes
    }
}

impl fmt::Display for KeepaliveConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.enabled() {
            f.write_str("off")?;
        } else {
            write!(
                f,
                "idle {}, interval {}, {} probes",
                format_duration(self.idle),
                format_duration(self.interval),
                self.probes
            )?;
        }
        if !self.user_timeout.is_zero() {
            write!(f, ", user timeout {}", format_duration(self.user_timeout))?;
        }
        Ok(())
    }
}

/// The kernel's limits (`TCP_KEEPIDLE`, `TCP_KEEPINTVL`: whole seconds up
/// to 32,767; `TCP_KEEPCNT`: up to 127).
const MAX_KEEPALIVE_SECS: u64 = 32_767;
const MAX_KEEPALIVE_PROBES: u32 = 127;
/// `TCP_USER_TIMEOUT` is an `int` of milliseconds.
const MAX_USER_TIMEOUT_MS: u128 = i32::MAX as u128;

// ---------------------------------------------------------------------------
// The raw, serde-facing shape. Everything is `deny_unknown_fields`; values
// that need a location in later checks are `Spanned`.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listeners: Spanned<Vec<RawListener>>,
    #[serde(default)]
    control: Option<RawControl>,
    #[serde(default)]
    admin: Option<RawAdmin>,
    #[serde(default)]
    reload: Option<RawReload>,
    #[serde(default)]
    drain: Option<RawDrain>,
    #[serde(default)]
    shutdown: Option<RawShutdown>,
    #[serde(default)]
    log: Option<RawLog>,
    #[serde(default)]
    limits: Option<RawLimits>,
    #[serde(default)]
    tcp_keepalive: Option<RawKeepaliveSetting>,
    #[serde(default)]
    warn_expiry: Option<Spanned<String>>,
}

/// `tcp_keepalive:` is a mapping, or `false`/`off` for keepalive off
/// (nginx's `so_keepalive=off`), or `true`/`on` for the defaults.
enum RawKeepaliveSetting {
    Switch(bool),
    Settings(Box<RawKeepalive>),
}

impl<'de> Deserialize<'de> for RawKeepaliveSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawKeepaliveSetting;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a mapping with idle, interval, probes and user_timeout, or false to turn keepalive off",
                )
            }

            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<Self::Value, E> {
                Ok(RawKeepaliveSetting::Switch(on))
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                match s {
                    "on" | "true" => Ok(RawKeepaliveSetting::Switch(true)),
                    "off" | "false" => Ok(RawKeepaliveSetting::Switch(false)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(s), &self)),
                }
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                RawKeepalive::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|k| RawKeepaliveSetting::Settings(Box::new(k)))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeepalive {
    #[serde(default)]
    idle: Option<Spanned<String>>,
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    probes: Option<Spanned<u32>>,
    #[serde(default)]
    user_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Spanned<String>,
    bind: Spanned<String>,
    backend: Spanned<String>,
    #[serde(default)]
    backend_proxy_protocol: Option<Spanned<String>>,
    tls: RawTls,
    #[serde(default)]
    max_connections: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificates: Spanned<Vec<RawCertificate>>,
    #[serde(default)]
    client_ca: Option<Spanned<String>>,
    #[serde(default)]
    handshake_timeout: Option<Spanned<String>>,
    #[serde(default)]
    session_resumption: Option<bool>,
    #[serde(default)]
    alpn: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    min_version: Option<Spanned<String>>,
    #[serde(default)]
    cipher_suites: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    groups: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    cert: Spanned<String>,
    key: Spanned<String>,
    #[serde(default)]
    names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    #[serde(default)]
    socket: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Spanned<String>,
    #[serde(default)]
    allow_remote: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReload {
    #[serde(default)]
    watch: Option<bool>,
    #[serde(default)]
    debounce: Option<Spanned<String>>,
    #[serde(default)]
    poll: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrain {
    #[serde(default)]
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    #[serde(default)]
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    level: Option<Spanned<String>>,
    #[serde(default)]
    connections: Option<bool>,
    #[serde(default)]
    format: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    max_connections: Option<usize>,
    #[serde(default)]
    backend_connect_timeout: Option<Spanned<String>>,
    #[serde(default)]
    idle_timeout: Option<Spanned<String>>,
    #[serde(default)]
    allow_insecure_key_permissions: bool,
}

fn at<T>(s: &Spanned<T>) -> Option<(u64, u64)> {
    let l = s.referenced;
    if l.line() == 0 {
        None
    } else {
        Some((l.line(), l.column()))
    }
}

/// Parses `200ms`, `30s`, `5m`, `1h`, `14d`, `0` or `0s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {s:?} needs a unit (ms, s, m, h or d), e.g. \"200ms\""))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} does not start with a whole number"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {s:?} is too long"))?,
        "h" => n
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {s:?} is too long"))?,
        "d" => n
            .checked_mul(86_400)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {s:?} is too long"))?,
        _ => {
            return Err(format!(
                "duration {s:?} has unknown unit {unit:?} (use ms, s, m, h or d)"
            ));
        }
    };
    Ok(d)
}

/// Formats a duration the way the configuration file writes it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

impl Config {
    /// Parses and validates the bytes of the top-level file found at `path`.
    /// `path` is used to name the file in errors and to resolve relative paths.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                file: path.to_path_buf(),
                size: bytes.len() as u64,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| ConfigError::NotUtf8 {
            file: path.to_path_buf(),
            offset: e.valid_up_to(),
        })?;
        let is_blank = text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
        });
        if is_blank {
            return Err(ConfigError::Empty {
                file: path.to_path_buf(),
            });
        }
        let options = serde_saphyr::options! {
            with_snippet: false,
        };
        let raw: RawConfig = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
            let loc = e.location().filter(|l| l.line() > 0);
            ConfigError::Syntax {
                file: path.to_path_buf(),
                line: loc.map(|l| l.line()),
                column: loc.map(|l| l.column()),
                reason: tidy_yaml_reason(&e.without_snippet().to_string()),
            }
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        Self::validate(path, &base, raw)
    }

    fn validate(path: &Path, base: &Path, raw: RawConfig) -> Result<Config, ConfigError> {
        let resolve = |s: &Spanned<String>, what: &str| -> Result<PathBuf, ConfigError> {
            if s.value.trim().is_empty() {
                return Err(ConfigError::invalid(
                    path,
                    at(s),
                    format!("{what} path is empty"),
                ));
            }
            let p = Path::new(&s.value);
            Ok(if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            })
        };
        let duration = |s: &Option<Spanned<String>>,
                        what: &str,
                        default: Duration|
         -> Result<Duration, ConfigError> {
            match s {
                None => Ok(default),
                Some(s) => parse_duration(&s.value)
                    .map_err(|e| ConfigError::invalid(path, at(s), format!("{what}: {e}"))),
            }
        };

        if raw.listeners.value.is_empty() {
            return Err(ConfigError::invalid(
                path,
                at(&raw.listeners),
                "listeners: at least one listener is required",
            ));
        }
        let mut names = HashSet::new();
        let mut binds = HashSet::new();
        let mut listeners = Vec::new();
        for l in &raw.listeners.value {
            let name = l.name.value.trim().to_string();
            if name.is_empty() {
                return Err(ConfigError::invalid(
                    path,
                    at(&l.name),
                    "listener name is empty",
                ));
            }
            if !names.insert(name.clone()) {
                return Err(ConfigError::invalid(
                    path,
                    at(&l.name),
                    format!("listener name {name:?} is used twice; names must be unique"),
                ));
            }
            let bind: SocketAddr = l.bind.value.trim().parse().map_err(|_| {
                ConfigError::invalid(
                    path,
                    at(&l.bind),
                    format!(
                        "listener {name:?}: bind address {:?} is not IP:port (e.g. \"127.0.0.1:8443\")",
                        l.bind.value
                    ),
                )
            })?;
            // Port 0 too: sockets are kept across reloads by their
            // configured address, so two listeners on one address (even a
            // "pick any port" one) would share one identity.
            if !binds.insert(bind) {
                return Err(ConfigError::invalid(
                    path,
                    at(&l.bind),
                    format!("listener {name:?}: bind address {bind} is used by another listener"),
                ));
            }
            let backend = Backend::parse(l.backend.value.trim()).map_err(|e| {
                ConfigError::invalid(path, at(&l.backend), format!("listener {name:?}: {e}"))
            })?;
            let backend_proxy_protocol = match &l.backend_proxy_protocol {
                None => ProxyProtocol::None,
                Some(s) => ProxyProtocol::parse(s.value.trim()).ok_or_else(|| {
                    ConfigError::invalid(
                        path,
                        at(s),
                        format!(
                            "listener {name:?}: backend_proxy_protocol {:?} is not none, v1 or v2",
                            s.value.trim()
                        ),
                    )
                })?,
            };
            if l.tls.certificates.value.is_empty() {
                return Err(ConfigError::invalid(
                    path,
                    at(&l.tls.certificates),
                    format!("listener {name:?}: tls.certificates needs at least one certificate"),
                ));
            }
            let mut certificates = Vec::new();
            for c in &l.tls.certificates.value {
                certificates.push(CertificateRef {
                    cert: resolve(&c.cert, "cert")?,
                    key: resolve(&c.key, "key")?,
                    names: c.names.clone(),
                });
            }
            let client_ca = match &l.tls.client_ca {
                Some(s) => Some(resolve(s, "client_ca")?),
                None => None,
            };
            let handshake_timeout = duration(
                &l.tls.handshake_timeout,
                "tls.handshake_timeout",
                Duration::from_secs(10),
            )?;
            let mut alpn: Vec<String> = Vec::new();
            if let Some(list) = &l.tls.alpn {
                for protocol in &list.value {
                    let problem = if protocol.is_empty() {
                        Some("is empty")
                    } else if protocol.len() > 255 {
                        Some("is longer than 255 bytes")
                    } else if alpn.contains(protocol) {
                        Some("is listed twice")
                    } else {
                        None
                    };
                    if let Some(problem) = problem {
                        return Err(ConfigError::invalid(
                            path,
                            at(list),
                            format!("listener {name:?}: tls.alpn: protocol {protocol:?} {problem}"),
                        ));
                    }
                    alpn.push(protocol.clone());
                }
            }
            let min_version = match &l.tls.min_version {
                None => TlsVersion::Tls12,
                Some(s) => TlsVersion::parse(&s.value).ok_or_else(|| {
                    ConfigError::invalid(
                        path,
                        at(s),
                        format!(
                            "listener {name:?}: tls.min_version {:?} is not \"1.2\" or \"1.3\"",
                            s.value.trim()
                        ),
                    )
                })?,
            };
            // A list of algorithm names, checked by `check`; absent: empty.
            let names =
                |list: &Option<Spanned<Vec<String>>>, key: &str, check: NamesCheck| match list {
                    None => Ok(Vec::new()),
                    Some(list) => check(list, min_version).map_err(|reason| {
                        ConfigError::invalid(
                            path,
                            at(list),
                            format!("listener {name:?}: {key}: {reason}"),
                        )
                    }),
                };
            let cipher_suites = names(&l.tls.cipher_suites, "tls.cipher_suites", cipher_suites)?;
            let groups = names(&l.tls.groups, "tls.groups", groups)?;
            listeners.push(ListenerConfig {
                name,
                bind,
                backend,
                tls: TlsConfig {
                    certificates,
                    client_ca,
                    handshake_timeout,
                    session_resumption: l.tls.session_resumption.unwrap_or(true),
                    alpn,
                    min_version,
                    cipher_suites,
                    groups,
                },
                max_connections: l.max_connections.unwrap_or(0),
                backend_proxy_protocol,
            });
        }

        let control = ControlConfig {
            socket: match raw.control.as_ref().and_then(|c| c.socket.as_ref()) {
                Some(s) => Some(resolve(s, "control.socket")?),
                None => None,
            },
        };
        let admin = match &raw.admin {
            None => None,
            Some(a) => {
                let listen: SocketAddr = a.listen.value.trim().parse().map_err(|_| {
                    ConfigError::invalid(
                        path,
                        at(&a.listen),
                        format!("admin.listen {:?} is not IP:port", a.listen.value),
                    )
                })?;
                if !listen.ip().is_loopback() && !a.allow_remote {
                    return Err(ConfigError::invalid(
                        path,
                        at(&a.listen),
                        format!(
                            "admin.listen {listen} is not a loopback address; set admin.allow_remote: true to expose the admin endpoint"
                        ),
                    ));
                }
                Some(AdminConfig {
                    listen,
                    allow_remote: a.allow_remote,
                })
            }
        };
        let reload_raw = raw.reload.as_ref();
        let reload = ReloadConfig {
            watch: reload_raw.and_then(|r| r.watch).unwrap_or(true),
            debounce: duration(
                &reload_raw.and_then(|r| r.debounce.clone()),
                "reload.debounce",
                Duration::from_millis(200),
            )?,
            poll: duration(
                &reload_raw.and_then(|r| r.poll.clone()),
                "reload.poll",
                Duration::from_secs(30),
            )?,
        };
        let drain = DrainConfig {
            timeout: duration(
                &raw.drain.as_ref().and_then(|d| d.timeout.clone()),
                "drain.timeout",
                Duration::ZERO,
            )?,
        };
        let shutdown = ShutdownConfig {
            timeout: duration(
                &raw.shutdown.as_ref().and_then(|d| d.timeout.clone()),
                "shutdown.timeout",
                Duration::from_secs(30),
            )?,
        };
        let log_raw = raw.log.as_ref();
        let level = match log_raw.and_then(|l| l.level.as_ref()) {
            None => "info".to_string(),
            Some(s) => {
                let v = s.value.trim().to_ascii_lowercase();
                if !["error", "warn", "info", "debug", "trace"].contains(&v.as_str()) {
                    return Err(ConfigError::invalid(
                        path,
                        at(s),
                        format!(
                            "log.level {:?} is not one of error, warn, info, debug, trace",
                            s.value
                        ),
                    ));
                }
                v
            }
        };
        let format = match log_raw.and_then(|l| l.format.as_ref()) {
            None => LogFormat::Text,
            Some(s) => match s.value.trim() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError::invalid(
                        path,
                        at(s),
                        format!("log.format {other:?} is not text or json"),
                    ));
                }
            },
        };
        let limits_raw = raw.limits.as_ref();
        let limits = LimitsConfig {
            max_connections: limits_raw.and_then(|l| l.max_connections).unwrap_or(0),
            backend_connect_timeout: duration(
                &limits_raw.and_then(|l| l.backend_connect_timeout.clone()),
                "limits.backend_connect_timeout",
                Duration::from_secs(5),
            )?,
            idle_timeout: duration(
                &limits_raw.and_then(|l| l.idle_timeout.clone()),
                "limits.idle_timeout",
                Duration::ZERO,
            )?,
            allow_insecure_key_permissions: limits_raw
                .map(|l| l.allow_insecure_key_permissions)
                .unwrap_or(false),
        };
        let tcp_keepalive = match &raw.tcp_keepalive {
            None | Some(RawKeepaliveSetting::Switch(true)) => KeepaliveConfig::DEFAULT,
            Some(RawKeepaliveSetting::Switch(false)) => KeepaliveConfig {
                idle: Duration::ZERO,
                user_timeout: Duration::ZERO,
                ..KeepaliveConfig::DEFAULT
            },
            Some(RawKeepaliveSetting::Settings(k)) => {
                let seconds = |s: &Option<Spanned<String>>,
                               what: &str,
                               default: Duration,
                               zero_allowed: bool|
                 -> Result<Duration, ConfigError> {
                    let d = duration(s, what, default)?;
                    let problem = if d.is_zero() {
                        (!zero_allowed).then(|| "must be at least 1s".to_string())
                    } else if d.subsec_nanos() != 0 {
                        Some(
                            "must be whole seconds (the kernel counts keepalive time in seconds)"
                                .to_string(),
                        )
                    } else if d.as_secs() > MAX_KEEPALIVE_SECS {
                        Some(format!(
                            "must be at most {MAX_KEEPALIVE_SECS}s (the kernel's limit)"
                        ))
                    } else {
                        None
                    };
                    match (problem, s) {
                        (Some(problem), Some(s)) => Err(ConfigError::invalid(
                            path,
                            at(s),
                            format!("{what} {:?} {problem}", s.value.trim()),
                        )),
                        _ => Ok(d),
                    }
                };
                let idle = seconds(
                    &k.idle,
                    "tcp_keepalive.idle",
                    KeepaliveConfig::DEFAULT.idle,
                    true,
                )?;
                let interval = seconds(
                    &k.interval,
                    "tcp_keepalive.interval",
                    KeepaliveConfig::DEFAULT.interval,
                    false,
                )?;
                let probes = match &k.probes {
                    None => KeepaliveConfig::DEFAULT.probes,
                    Some(p) if (1..=MAX_KEEPALIVE_PROBES).contains(&p.value) => p.value,
                    Some(p) => {
                        return Err(ConfigError::invalid(
                            path,
                            at(p),
                            format!(
                                "tcp_keepalive.probes {} must be between 1 and {MAX_KEEPALIVE_PROBES}",
                                p.value
                            ),
                        ));
                    }
                };
                let mut keepalive = KeepaliveConfig {
                    idle,
                    interval,
                    probes,
                    user_timeout: Duration::ZERO,
                };
                keepalive.user_timeout = match &k.user_timeout {
                    None => keepalive.keepalive_time(),
                    Some(t) => {
                        let d = duration(
                            &k.user_timeout,
                            "tcp_keepalive.user_timeout",
                            Duration::ZERO,
                        )?;
                        // Durations are whole milliseconds already.
                        if d.as_millis() > MAX_USER_TIMEOUT_MS {
                            return Err(ConfigError::invalid(
                                path,
                                at(t),
                                format!(
                                    "tcp_keepalive.user_timeout {:?} must be at most {MAX_USER_TIMEOUT_MS}ms (the kernel's limit)",
                                    t.value.trim()
                                ),
                            ));
                        }
                        d
                    }
                };
                keepalive
            }
        };
        let warn_expiry = duration(
            &raw.warn_expiry,
            "warn_expiry",
            Duration::from_secs(14 * 86_400),
        )?;
        Ok(Config {
            path: path.to_path_buf(),
            listeners,
            control,
            admin,
            reload,
            drain,
            shutdown,
            log: LogConfig {
                level,
                format,
                connections: log_raw.and_then(|l| l.connections).unwrap_or(false),
            },
            limits,
            tcp_keepalive,
            warn_expiry,
        })
    }

    /// Every file this configuration references, in a stable order.
    pub fn referenced_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for l in &self.listeners {
            for c in &l.tls.certificates {
                out.push(c.cert.clone());
                out.push(c.key.clone());
            }
            if let Some(ca) = &l.tls.client_ca {
                out.push(ca.clone());
            }
        }
        out.dedup();
        out
    }
}

/// serde-saphyr's messages sometimes end with its own location suffix; we
/// print the location ourselves in `file:line:col` form, so drop it.
fn tidy_yaml_reason(s: &str) -> String {
    let s = s.trim();
    let s = match s.rfind(" at line ") {
        Some(i) => &s[..i],
        None => s,
    };
    let s = s.trim_end_matches(['.', ',']);
    // serde-saphyr names the Rust type it wanted; say it in the file's terms.
    match s {
        "invalid u8" | "invalid u16" | "invalid u32" | "invalid u64" | "invalid usize" => {
            format!("{s}: expected a whole number, 0 or more")
        }
        "invalid boolean" => "invalid boolean: expected true or false".to_string(),
        _ => s.to_string(),
    }
}

/// Reads the top-level file with the size cap.
pub fn read_config_bytes(path: &Path) -> Result<Vec<u8>, ConfigError> {
    crate::material::read_capped(path, MAX_CONFIG_BYTES).map_err(|e| match e {
        crate::material::ReadError::TooLarge(size) => ConfigError::TooLarge {
            file: path.to_path_buf(),
            size,
        },
        other => ConfigError::Read {
            file: path.to_path_buf(),
            reason: other.to_string(),
        },
    })
}

/// Checks a list of algorithm names against the TLS versions served;
/// returns the names to keep.
type NamesCheck = fn(&Spanned<Vec<String>>, TlsVersion) -> Result<Vec<String>, String>;

/// Checks a `tls.cipher_suites` list: names stayup serves, each once, and
/// a suite for every TLS version clients may use.
fn cipher_suites(list: &Spanned<Vec<String>>, min: TlsVersion) -> Result<Vec<String>, String> {
    let known = || {
        crate::suites::NAMES
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out: Vec<String> = Vec::new();
    for suite in &list.value {
        if crate::suites::NAMES.iter().all(|(n, _)| n != suite) {
            return Err(format!(
                "{suite:?} is not a suite stayup serves (IANA names: {})",
                known()
            ));
        }
        if out.contains(suite) {
            return Err(format!("{suite:?} is listed twice"));
        }
        out.push(suite.clone());
    }
    if out.is_empty() {
        return Err(format!(
            "the list is empty; leave it out for stayup's choice, or name suites: {}",
            known()
        ));
    }
    let tls13 = out
        .iter()
        .filter(|n| crate::suites::is_tls13_name(n))
        .count();
    if tls13 == 0 {
        return Err("names no TLS 1.3 suite; stayup always serves TLS 1.3".into());
    }
    match min {
        TlsVersion::Tls12 if tls13 == out.len() => Err(
            "names no TLS 1.2 suite, yet tls.min_version \"1.2\" lets TLS 1.2 clients in; name one, or set min_version \"1.3\"".into(),
        ),
        TlsVersion::Tls13 if tls13 < out.len() => Err(
            "names TLS 1.2 suites, yet tls.min_version \"1.3\" lets no TLS 1.2 client in".into(),
        ),
        _ => Ok(out),
    }
}

/// Checks a `tls.groups` list: groups stayup accepts, each once, and one
/// that TLS 1.2 can use if TLS 1.2 clients may connect. Returns stayup's
/// names for them.
fn groups(list: &Spanned<Vec<String>>, min: TlsVersion) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for written in &list.value {
        let Some(name) = crate::groups::canonical(written.trim()) else {
            return Err(format!(
                "{written:?} is not a key exchange group stayup accepts (names: {})",
                crate::groups::known()
            ));
        };
        if out.iter().any(|n| n == name) {
            return Err(if written == name {
                format!("{name:?} is listed twice")
            } else {
                format!("{written:?} is {name}, which is listed twice")
            });
        }
        out.push(name.to_string());
    }
    if out.is_empty() {
        return Err(format!(
            "the list is empty; leave it out for the default set, or name groups: {}",
            crate::groups::known()
        ));
    }
    if min == TlsVersion::Tls12 && out.iter().all(|n| crate::groups::tls13_only(n)) {
        return Err(
            "names only post-quantum groups, which TLS 1.2 cannot use, yet tls.min_version \"1.2\" lets TLS 1.2 clients in; add X25519, P-256 or P-384, or set min_version \"1.3\"".into(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/stayup/stayup.yaml"), s.as_bytes())
    }

    const GOOD: &str = r#"
listeners:
  - name: web
    bind: "127.0.0.1:8443"
    backend: "127.0.0.1:8080"
    tls:
      certificates:
        - cert: certs/web.pem
          key: certs/web.key
reload:
  debounce: 150ms
drain:
  timeout: 30s
"#;

    #[test]
    fn parses_the_documented_shape() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listeners.len(), 1);
        let l = &c.listeners[0];
        assert_eq!(l.name, "web");
        assert_eq!(l.bind, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(l.backend.to_string(), "127.0.0.1:8080");
        assert_eq!(
            l.tls.certificates[0].cert,
            PathBuf::from("/etc/stayup/certs/web.pem")
        );
        assert_eq!(c.reload.debounce, Duration::from_millis(150));
        assert_eq!(c.drain.timeout, Duration::from_secs(30));
        assert_eq!(c.shutdown.timeout, Duration::from_secs(30));
        assert!(c.reload.watch);
    }

    #[test]
    fn unknown_key_is_located() {
        let e = parse(&GOOD.replace("drain:", "drian:")).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, ConfigError::Syntax { line: Some(_), .. }),
            "{msg}"
        );
        assert!(msg.contains("/etc/stayup/stayup.yaml:"), "{msg}");
        assert!(msg.contains("drian"), "{msg}");
    }

    #[test]
    fn duplicate_key_is_rejected() {
        let e = parse(&format!("{GOOD}drain:\n  timeout: 1s\n")).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
        assert!(e.to_string().to_lowercase().contains("duplicate"), "{e}");
    }

    #[test]
    fn duplicate_listener_name_and_bind() {
        let two = GOOD.replace(
            "reload:",
            "  - name: web\n    bind: \"127.0.0.1:9443\"\n    backend: \"127.0.0.1:8080\"\n    tls:\n      certificates:\n        - cert: a\n          key: b\nreload:",
        );
        let e = parse(&two).unwrap_err();
        assert!(e.to_string().contains("used twice"), "{e}");
        assert!(e.to_string().contains(":10:"), "{e}");
        let two = two.replace(
            "name: web\n    bind: \"127.0.0.1:9443\"",
            "name: api\n    bind: \"127.0.0.1:8443\"",
        );
        let e = parse(&two).unwrap_err();
        assert!(e.to_string().contains("used by another listener"), "{e}");
    }

    #[test]
    fn bad_backend_and_duration() {
        let e = parse(&GOOD.replace("127.0.0.1:8080", "not an address")).unwrap_err();
        assert!(e.to_string().contains("backend"), "{e}");
        assert!(e.to_string().contains(":5:"), "{e}");
        let e = parse(&GOOD.replace("150ms", "150 fortnights")).unwrap_err();
        assert!(e.to_string().contains("reload.debounce"), "{e}");
    }

    #[test]
    fn empty_and_non_utf8() {
        assert!(matches!(
            parse("# nothing\n"),
            Err(ConfigError::Empty { .. })
        ));
        let e = Config::parse(Path::new("x.yaml"), b"listeners: \xff\xfe").unwrap_err();
        assert!(matches!(e, ConfigError::NotUtf8 { offset: 11, .. }), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_duration("14d").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn tcp_keepalive_defaults_on_and_is_checked_against_the_kernels_limits() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.tcp_keepalive, KeepaliveConfig::DEFAULT);
        assert!(c.tcp_keepalive.enabled());
        let c = parse(&format!(
            "{GOOD}tcp_keepalive:\n  idle: 45s\n  interval: 5s\n  probes: 3\n"
        ))
        .unwrap();
        assert_eq!(
            c.tcp_keepalive,
            KeepaliveConfig {
                idle: Duration::from_secs(45),
                interval: Duration::from_secs(5),
                probes: 3,
                // By default what keepalive takes: 45 + 5 × 3 seconds.
                user_timeout: Duration::from_secs(60),
            }
        );
        assert_eq!(
            c.tcp_keepalive.to_string(),
            "idle 45s, interval 5s, 3 probes, user timeout 60s"
        );
        assert_eq!(
            KeepaliveConfig::DEFAULT.keepalive_time(),
            Duration::from_secs(240)
        );
        assert_eq!(
            KeepaliveConfig::DEFAULT.user_timeout,
            Duration::from_secs(240)
        );
        let off = parse(&format!("{GOOD}tcp_keepalive:\n  idle: 0\n")).unwrap();
        assert!(!off.tcp_keepalive.enabled());
        assert_eq!(off.tcp_keepalive.user_timeout, Duration::ZERO);
        assert_eq!(off.tcp_keepalive.to_string(), "off");
        let set = |yaml: &str| {
            parse(&format!("{GOOD}tcp_keepalive:\n{yaml}"))
                .unwrap()
                .tcp_keepalive
        };
        let t = set("  user_timeout: 1500ms\n");
        assert_eq!(t.user_timeout, Duration::from_millis(1500));
        assert_eq!((t.idle, t.probes), (KeepaliveConfig::DEFAULT.idle, 4));
        assert_eq!(set("  user_timeout: 0\n").user_timeout, Duration::ZERO);
        // Without keepalive, a user timeout of its own.
        let alone = set("  idle: 0\n  user_timeout: 30s\n");
        assert!(!alone.enabled());
        assert_eq!(alone.to_string(), "off, user timeout 30s");
        for switch in ["off", "false", "\"off\""] {
            let c = parse(&format!("{GOOD}tcp_keepalive: {switch}\n")).unwrap();
            assert!(!c.tcp_keepalive.enabled(), "{switch}");
        }
        for switch in ["on", "true"] {
            let c = parse(&format!("{GOOD}tcp_keepalive: {switch}\n")).unwrap();
            assert_eq!(c.tcp_keepalive, KeepaliveConfig::DEFAULT, "{switch}");
        }
        let e = parse(&format!("{GOOD}tcp_keepalive: sometimes\n")).unwrap_err();
        assert!(e.to_string().contains(":14:"), "{e}");
        assert!(e.to_string().contains("false to turn keepalive off"), "{e}");
        let e = parse(&format!("{GOOD}tcp_keepalive:\n  idel: 5s\n")).unwrap_err();
        assert!(e.to_string().contains(":15:"), "{e}");
        assert!(e.to_string().contains("idel"), "{e}");
        for (bad, wanted) in [
            ("idle: 1500ms", "whole seconds"),
            ("idle: 10h", "at most 32767s"),
            ("interval: 0", "at least 1s"),
            ("probes: 0", "between 1 and 127"),
            ("probes: 128", "between 1 and 127"),
            ("idle: soon", "tcp_keepalive.idle"),
            ("probes: many", "expected a whole number, 0 or more"),
            ("user_timeout: 30d", "at most 2147483647ms"),
            ("user_timeout: later", "tcp_keepalive.user_timeout"),
        ] {
            let e = parse(&format!("{GOOD}tcp_keepalive:\n  {bad}\n")).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(wanted), "{bad}: {msg}");
            assert!(msg.contains("/etc/stayup/stayup.yaml:15:"), "{bad}: {msg}");
        }
    }

    #[test]
    fn min_tls_version_takes_plain_and_quoted_forms() {
        assert_eq!(
            parse(GOOD).unwrap().listeners[0].tls.min_version,
            TlsVersion::Tls12
        );
        for (written, wanted) in [
            ("1.3", TlsVersion::Tls13),
            ("\"1.3\"", TlsVersion::Tls13),
            ("TLSv1.3", TlsVersion::Tls13),
            ("1.2", TlsVersion::Tls12),
        ] {
            let c = parse(&GOOD.replace(
                "      certificates:",
                &format!("      min_version: {written}\n      certificates:"),
            ))
            .unwrap();
            assert_eq!(c.listeners[0].tls.min_version, wanted, "{written}");
        }
        let e = parse(&GOOD.replace(
            "      certificates:",
            "      min_version: 1.1\n      certificates:",
        ))
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(":7:"), "{msg}");
        assert!(
            msg.contains("listener \"web\": tls.min_version \"1.1\" is not \"1.2\" or \"1.3\""),
            "{msg}"
        );
    }

    #[test]
    fn cipher_suites_are_checked_by_name_and_against_the_versions_served() {
        assert!(
            parse(GOOD).unwrap().listeners[0]
                .tls
                .cipher_suites
                .is_empty()
        );
        let with = |min: &str, list: &str| {
            parse(&GOOD.replace(
                "      certificates:",
                &format!(
                    "      min_version: \"{min}\"\n      cipher_suites: {list}\n      certificates:"
                ),
            ))
        };
        let c = with(
            "1.2",
            "[TLS_AES_256_GCM_SHA384, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]",
        )
        .unwrap();
        assert_eq!(
            c.listeners[0].tls.cipher_suites,
            [
                "TLS_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
            ]
        );
        assert!(with("1.3", "[TLS_CHACHA20_POLY1305_SHA256]").is_ok());
        for (min, list, wanted) in [
            (
                "1.2",
                "[ECDHE-ECDSA-AES128-GCM-SHA256]",
                "\"ECDHE-ECDSA-AES128-GCM-SHA256\" is not a suite stayup serves (IANA names: TLS_AES_128_GCM_SHA256, ",
            ),
            (
                "1.3",
                "[TLS_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]",
                "\"TLS_AES_128_GCM_SHA256\" is listed twice",
            ),
            ("1.3", "[]", "the list is empty"),
            (
                "1.2",
                "[TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]",
                "names no TLS 1.3 suite",
            ),
            ("1.2", "[TLS_AES_128_GCM_SHA256]", "names no TLS 1.2 suite"),
            (
                "1.3",
                "[TLS_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]",
                "names TLS 1.2 suites",
            ),
        ] {
            let msg = with(min, list).unwrap_err().to_string();
            assert!(msg.contains(":8:"), "{list}: {msg}");
            assert!(
                msg.contains("listener \"web\": tls.cipher_suites: "),
                "{msg}"
            );
            assert!(msg.contains(wanted), "{list}: {msg}");
        }
    }

    #[test]
    fn groups_are_checked_by_name_and_against_the_versions_served() {
        assert!(parse(GOOD).unwrap().listeners[0].tls.groups.is_empty());
        let with = |min: &str, list: &str| {
            parse(&GOOD.replace(
                "      certificates:",
                &format!("      min_version: \"{min}\"\n      groups: {list}\n      certificates:"),
            ))
        };
        let c = with("1.2", "[secp384r1, x25519mlkem768, P-256]").unwrap();
        assert_eq!(
            c.listeners[0].tls.groups,
            ["P-384", "X25519MLKEM768", "P-256"]
        );
        assert!(with("1.3", "[MLKEM1024]").is_ok());
        for (min, list, wanted) in [
            (
                "1.2",
                "[X25519, P-521]",
                "\"P-521\" is not a key exchange group stayup accepts (names: X25519MLKEM768, ",
            ),
            ("1.2", "[X25519, X25519]", "\"X25519\" is listed twice"),
            (
                "1.2",
                "[P-256, prime256v1]",
                "\"prime256v1\" is P-256, which is listed twice",
            ),
            ("1.3", "[]", "the list is empty"),
            (
                "1.2",
                "[X25519MLKEM768, MLKEM768]",
                "names only post-quantum groups, which TLS 1.2 cannot use",
            ),
        ] {
            let msg = with(min, list).unwrap_err().to_string();
            assert!(msg.contains(":8:"), "{list}: {msg}");
            assert!(msg.contains("listener \"web\": tls.groups: "), "{msg}");
            assert!(msg.contains(wanted), "{list}: {msg}");
        }
    }

    #[test]
    fn type_errors_are_said_in_the_files_terms() {
        let e =
            parse(&GOOD.replace("    tls:\n", "    max_connections: -5\n    tls:\n")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(":6:"), "{msg}");
        assert!(msg.contains("expected a whole number, 0 or more"), "{msg}");
        let e = parse(&GOOD.replace("    tls:\n", "    tls:\n      session_resumption: maybe\n"))
            .unwrap_err();
        assert!(e.to_string().contains("expected true or false"), "{e}");
    }

    #[test]
    fn backend_forms() {
        assert_eq!(Backend::parse("[::1]:80").unwrap().to_string(), "[::1]:80");
        assert_eq!(Backend::parse("db.internal:5432").unwrap().port, 5432);
        assert!(Backend::parse("db.internal").is_err());
        assert!(Backend::parse("db internal:1").is_err());
        assert!(Backend::parse("h:0").is_err());
        assert!(Backend::parse("127.0.0.1:0").is_err());
    }
}
