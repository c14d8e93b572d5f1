//! The five systems, configured alike: one TLS 1.3 listener with an ECDSA
//! P-256 certificate, session tickets and the session cache off, forwarding
//! to the plaintext backend; one worker, pinned to the proxy's CPU.
//!
//! OpenSSL-based peers also get an `OPENSSL_CONF` with `NumTickets = 0`:
//! with TLS 1.3, turning tickets "off" in nginx or stunnel still sends
//! stateful tickets unless the number of tickets is zero.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rustls::ClientConfig;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::tls::CertFiles;

static PROXY_CPU: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Chooses the CPU every proxy runs on: CPU 1 when the process may use it
/// (the load generator and backend use CPU 0), else CPU 0 shared with them.
/// Called once, before the driver pins itself.
pub fn choose_proxy_cpu() -> usize {
    *PROXY_CPU.get_or_init(|| {
        let can_use_1 = nix::sched::sched_getaffinity(Pid::from_raw(0))
            .map(|set| set.is_set(1).unwrap_or(false))
            .unwrap_or(false);
        usize::from(can_use_1)
    })
}

/// The CPU every proxy runs on.
pub fn proxy_cpu() -> usize {
    PROXY_CPU.get().copied().unwrap_or(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stayup,
    Nginx,
    Haproxy,
    Hitch,
    Stunnel,
    /// nginx forwarding plain TCP: not a contender, the floor of the
    /// handshake test (the kernel's and an event loop's cost of a
    /// connection, with no TLS).
    NginxPlain,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Stayup,
        Kind::Nginx,
        Kind::Haproxy,
        Kind::Hitch,
        Kind::Stunnel,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Stayup => "stayup",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
            Kind::Hitch => "hitch",
            Kind::Stunnel => "stunnel",
            Kind::NginxPlain => "nginx-plain",
        }
    }

    /// Whether this machine has what the system needs to run.
    pub fn installed(self) -> bool {
        match self {
            Kind::Stayup => true,
            Kind::Nginx | Kind::NginxPlain => {
                on_path("nginx")
                    && Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").exists()
            }
            Kind::Haproxy => on_path("haproxy"),
            Kind::Hitch => on_path("hitch"),
            Kind::Stunnel => on_path("stunnel"),
        }
    }

    pub fn version(self, stayup: &Path) -> String {
        let (bin, arg): (&Path, &str) = match self {
            Kind::Stayup => (stayup, "--version"),
            Kind::Nginx | Kind::NginxPlain => (Path::new("nginx"), "-v"),
            Kind::Haproxy => (Path::new("haproxy"), "-v"),
            Kind::Hitch => (Path::new("hitch"), "--version"),
            Kind::Stunnel => (Path::new("stunnel"), "-version"),
        };
        let Ok(out) = Command::new(bin).arg(arg).stdin(Stdio::null()).output() else {
            return "?".into();
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("Initializing") && !l.starts_with("[ ]"))
            .unwrap_or("?")
            .to_string()
    }
}

pub fn on_path(bin: &str) -> bool {
    which(bin).is_some()
}

/// The full path of `bin` on PATH.
fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|f| f.is_file())
}

/// What every system shares.
pub struct Env {
    pub dir: PathBuf,
    pub stayup: PathBuf,
    pub backend_port: u16,
    /// Two certificates for the same name; reloads alternate between them.
    pub certs: [CertFiles; 2],
    pub openssl_conf: PathBuf,
    pub client: Arc<ClientConfig>,
    /// The same client offering the TLS 1.3 suites an OpenSSL client does.
    pub openssl_order_client: Arc<ClientConfig>,
}

impl Env {
    pub fn write_openssl_conf(path: &Path) -> Result<()> {
        std::fs::write(
            path,
            "openssl_conf = openssl_init\n\
             [openssl_init]\nssl_conf = ssl_sect\n\
             [ssl_sect]\nsystem_default = system_default_sect\n\
             [system_default_sect]\nMinProtocol = TLSv1.3\nNumTickets = 0\n",
        )?;
        Ok(())
    }
}

/// The stayup configuration for one listener serving `certs` (the first is
/// the default).
pub fn stayup_yaml(port: u16, backend: u16, certs: &[&CertFiles], watch: bool) -> String {
    let mut y = format!(
        "listeners:\n  - name: bench\n    bind: \"127.0.0.1:{port}\"\n    backend: \"127.0.0.1:{backend}\"\n    tls:\n      session_resumption: false\n      min_version: \"1.3\"\n      certificates:\n"
    );
    for c in certs {
        y.push_str(&format!(
            "        - cert: {}\n          key: {}\n",
            c.cert.display(),
            c.key.display()
        ));
    }
    y.push_str(&format!(
        "control:\n  socket: stayup.sock\nreload:\n  watch: {watch}\n  debounce: {}ms\n  poll: 0s\nshutdown:\n  timeout: 1s\nlog:\n  level: warn\ntcp_keepalive:\n  idle: 0\n",
        DEBOUNCE.as_millis()
    ));
    y
}

/// The debounce stayup runs with, for the automatic reload-to-effect target.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

fn config_text(kind: Kind, dir: &Path, port: u16, backend: u16, c: &CertFiles) -> String {
    let d = dir.display();
    match kind {
        Kind::Stayup => stayup_yaml(port, backend, &[c], false),
        Kind::Nginx => nginx_conf(dir, port, backend, Some(c)),
        Kind::NginxPlain => nginx_conf(dir, port, backend, None),
        Kind::Haproxy => format!(
            "global\n  nbthread 1\n  maxconn 9000\n  tune.ssl.cachesize 0\n\
             ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\
             frontend bench\n  bind 127.0.0.1:{port} ssl crt {}\n  default_backend be\n\
             backend be\n  server s1 127.0.0.1:{backend}\n",
            c.combined.display()
        ),
        Kind::Hitch => format!(
            "frontend = \"[127.0.0.1]:{port}\"\nbackend = \"[127.0.0.1]:{backend}\"\n\
             pem-file = \"{}\"\ntls-protos = TLSv1.3\nworkers = 1\ndaemon = off\n\
             backlog = 1024\nuser = \"nobody\"\ngroup = \"nogroup\"\nocsp-dir = \"{d}\"\nsni-nomatch-abort = off\n",
            c.combined.display()
        ),
        Kind::Stunnel => format!(
            "foreground = yes\npid = {d}/stunnel.pid\ndebug = 3\nsyslog = no\n\
             socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n\
             [bench]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{backend}\n\
             cert = {}\nkey = {}\nsslVersionMin = TLSv1.3\noptions = NO_TICKET\n",
            c.cert.display(),
            c.key.display()
        ),
    }
}

/// nginx's stream proxy, terminating TLS with `tls` or forwarding plain TCP.
fn nginx_conf(dir: &Path, port: u16, backend: u16, tls: Option<&CertFiles>) -> String {
    let (ssl, tls) = match tls {
        Some(c) => (
            " ssl",
            format!(
                "    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.3;\n\
                 ssl_session_cache off;\n    ssl_session_tickets off;\n",
                c.cert.display(),
                c.key.display()
            ),
        ),
        None => ("", String::new()),
    };
    format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\nworker_rlimit_nofile 20000;\n\
         pid {}/nginx.pid;\nerror_log stderr warn;\n\
         load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
         events {{ worker_connections 19000; }}\n\
         stream {{\n  server {{\n    listen 127.0.0.1:{port}{ssl} backlog=1024;\n{tls}\
         proxy_pass 127.0.0.1:{backend};\n    proxy_timeout 1h;\n  }}\n}}\n",
        dir.display()
    )
}

/// Writes `text` to `path` by renaming a new file into place.
pub fn publish(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot rename", path.display()))?;
    Ok(())
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A running proxy.
pub struct Proxy {
    pub kind: Kind,
    pub pid: i32,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub config: PathBuf,
    child: Child,
    which: usize,
    port: u16,
    backend: u16,
    log: PathBuf,
    /// Threads moved back to the proxy CPU so far.
    pub repinned: usize,
    /// nginx started as a daemon (its binary upgrade needs that): the
    /// process started exits at once, and `pid` comes from the pid file.
    daemonized: bool,
    /// Processes an upgrade or restart left behind (they drain), stopped
    /// with the proxy.
    retired: Vec<i32>,
}

impl Proxy {
    /// Starts `kind` with the first certificate and waits until it serves.
    pub async fn start(kind: Kind, env: &Env) -> Result<Proxy> {
        Self::start_with(kind, env, false).await
    }

    /// Like `start`, with nginx as a daemon: nginx ignores the binary
    /// upgrade signal in a master that runs in the foreground.
    pub async fn start_upgradable(kind: Kind, env: &Env) -> Result<Proxy> {
        Self::start_with(kind, env, kind == Kind::Nginx).await
    }

    async fn start_with(kind: Kind, env: &Env, daemon: bool) -> Result<Proxy> {
        let dir = env.dir.join(kind.name());
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let config = dir.join(match kind {
            Kind::Stayup => "stayup.yaml",
            Kind::Nginx | Kind::NginxPlain => "nginx.conf",
            Kind::Haproxy => "haproxy.cfg",
            Kind::Hitch => "hitch.conf",
            Kind::Stunnel => "stunnel.conf",
        });
        let mut text = config_text(kind, &dir, port, env.backend_port, &env.certs[0]);
        if daemon {
            text = text.replace("daemon off;", "daemon on;");
        }
        publish(&config, &text)?;
        Self::spawn(kind, env, dir, config, port, daemon).await
    }

    /// Starts stayup with a configuration of the caller's.
    pub async fn start_stayup(
        env: &Env,
        name: &str,
        yaml: impl Fn(u16) -> String,
    ) -> Result<Proxy> {
        let dir = env.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let config = dir.join("stayup.yaml");
        publish(&config, &yaml(port))?;
        Self::spawn(Kind::Stayup, env, dir, config, port, false).await
    }

    async fn spawn(
        kind: Kind,
        env: &Env,
        dir: PathBuf,
        config: PathBuf,
        port: u16,
        daemonized: bool,
    ) -> Result<Proxy> {
        let log = dir.join(format!("{}.log", kind.name()));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(proxy_cpu().to_string());
        let c = config.display().to_string();
        match kind {
            Kind::Stayup => cmd.arg(&env.stayup).args(["run", "--config", &c]),
            // By its full path: a binary upgrade executes the master's
            // argv[0] again.
            Kind::Nginx | Kind::NginxPlain => cmd
                .arg(which("nginx").unwrap_or_else(|| PathBuf::from("nginx")))
                .args(["-e", "stderr", "-c", &c, "-p"])
                .arg(&dir),
            Kind::Haproxy => cmd.args(["haproxy", "-W", "-db", "-f", &c]),
            Kind::Hitch => cmd.args(["hitch", "--config", &c]),
            Kind::Stunnel => cmd.args(["stunnel", &c]),
        };
        if kind != Kind::Stayup {
            cmd.env("OPENSSL_CONF", &env.openssl_conf);
        }
        cmd.current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", kind.name()))?;
        let mut p = Proxy {
            kind,
            pid: child.id() as i32,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            config,
            child,
            which: 0,
            port,
            backend: env.backend_port,
            log,
            repinned: 0,
            daemonized,
            retired: Vec::new(),
        };
        p.wait_ready(&env.client).await?;
        if daemonized {
            p.pid = p.pid_file()?;
        }
        p.keep_pinned();
        Ok(p)
    }

    /// Moves any thread of the proxy that has left the proxy CPU back onto
    /// it (see `procfs::pin_tree`); reports the first move of each system.
    pub fn keep_pinned(&mut self) {
        let moved = crate::procfs::pin_tree(self.pid, proxy_cpu());
        if moved > 0 && self.repinned == 0 {
            eprintln!(
                "{}: moved {moved} thread(s) that had pinned themselves elsewhere back to CPU {}",
                self.kind.name(),
                proxy_cpu()
            );
        }
        self.repinned += moved;
    }

    /// Waits until a full connection (handshake and echo; echo alone for
    /// the plain floor) goes through.
    async fn wait_ready(&mut self, cfg: &Arc<ClientConfig>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait()
                && !(self.daemonized && status.success())
            {
                bail!(
                    "{} exited ({status}) before serving:\n{}",
                    self.kind.name(),
                    self.log_tail()
                );
            }
            let tls = (self.kind != Kind::NginxPlain).then_some(cfg);
            if crate::load::once(self.addr, tls, b'E').await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not serve within 20 s:\n{}",
                    self.kind.name(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    pub fn cpu_seconds(&self) -> f64 {
        crate::procfs::cpu_seconds(self.pid)
    }

    pub fn memory(&self) -> crate::procfs::Memory {
        crate::procfs::memory(self.pid)
    }

    /// Switches to the other certificate and reloads the way the system
    /// documents: stayup over its control socket (answering the outcome),
    /// nginx SIGHUP, HAProxy (master-worker) SIGUSR2, hitch SIGHUP,
    /// stunnel SIGHUP.
    pub async fn reload(&mut self, env: &Env) -> Result<()> {
        // The worker the previous reload started has had time to pin itself.
        self.keep_pinned();
        self.which ^= 1;
        let text = config_text(
            self.kind,
            &self.dir,
            self.port,
            self.backend,
            &env.certs[self.which],
        );
        publish(&self.config, &text)?;
        match self.kind {
            Kind::Stayup => {
                let answer = self.control_reload().await?;
                if answer.result != "committed" {
                    bail!("stayup reload: {}", answer.raw);
                }
                Ok(())
            }
            Kind::Haproxy => self.signal(Signal::SIGUSR2),
            _ => self.signal(Signal::SIGHUP),
        }
    }

    pub fn signal(&self, s: Signal) -> Result<()> {
        kill(Pid::from_raw(self.pid), s)
            .with_context(|| format!("signal {} to {}", s, self.kind.name()))
    }

    /// Switches stayup to the other certificate; milliseconds from the
    /// request on the control socket to its answer.
    pub async fn reload_timed(&mut self, env: &Env) -> Result<f64> {
        self.which ^= 1;
        let text = config_text(
            self.kind,
            &self.dir,
            self.port,
            self.backend,
            &env.certs[self.which],
        );
        publish(&self.config, &text)?;
        let t = Instant::now();
        let answer = self.control_reload().await?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if answer.result != "committed" {
            bail!("stayup reload: {}", answer.raw);
        }
        Ok(ms)
    }

    pub async fn control_reload(&self) -> Result<ControlAnswer> {
        control_reload(&self.dir.join("stayup.sock")).await
    }

    /// SIGTERM, then SIGKILL for anything of the tree still there after
    /// 10 s; the same for processes an upgrade retired.
    pub async fn stop(mut self) {
        self.terminate().await;
    }

    /// What `stop` does, leaving the value (for a restart in place).
    async fn terminate(&mut self) {
        let roots: Vec<i32> = std::iter::once(self.pid)
            .chain(self.retired.iter().copied())
            .collect();
        let tree: Vec<i32> = roots.iter().flat_map(|&r| crate::procfs::tree(r)).collect();
        for &r in &roots {
            let _ = kill(Pid::from_raw(r), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let _ = self.child.try_wait();
            if !roots.iter().any(|&r| crate::procfs::alive(r)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in tree {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if ["stayup", "nginx", "haproxy", "hitch", "stunnel"]
                .iter()
                .any(|n| comm.trim() == *n)
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    fn pid_file(&self) -> Result<i32> {
        let path = self.dir.join("nginx.pid");
        read_pid(&path).with_context(|| format!("{}: no pid", path.display()))
    }

    /// Replaces the running binary the way the system documents, under
    /// load, and returns once the new process serves, with how it was done:
    /// stayup `stayup upgrade` (its control socket), nginx USR2 and then
    /// QUIT to the old master, HAProxy (master-worker) SIGUSR2 (the master
    /// executes its binary again); hitch and stunnel have no such thing
    /// and are restarted.
    pub async fn upgrade(&mut self, env: &Env) -> Result<&'static str> {
        let how = match self.kind {
            Kind::Stayup => {
                let v = control_request(&self.dir.join("stayup.sock"), "upgrade").await?;
                let pid = v["pid"].as_i64().and_then(|p| i32::try_from(p).ok());
                match (v["result"].as_str(), pid) {
                    (Some("upgraded"), Some(pid)) => {
                        self.retired.push(self.pid);
                        self.pid = pid;
                    }
                    _ => bail!("stayup upgrade: {v}"),
                }
                "`stayup upgrade`"
            }
            Kind::Nginx | Kind::NginxPlain => {
                if !self.daemonized {
                    bail!("nginx in the foreground cannot change its binary");
                }
                let old = self.pid;
                self.signal(Signal::SIGUSR2)?;
                let oldbin = self.dir.join("nginx.pid.oldbin");
                let deadline = Instant::now() + Duration::from_secs(20);
                let new = loop {
                    if let (Ok(o), Ok(n)) = (read_pid(&oldbin), self.pid_file())
                        && o == old
                        && n != old
                        && crate::procfs::tree(n).len() > 1
                    {
                        break n;
                    }
                    if Instant::now() > deadline {
                        bail!("nginx: no new master after USR2:\n{}", self.log_tail());
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                };
                // The new master is the old one's child: tracked from now
                // on by its own pid, the old one drains and exits.
                kill(Pid::from_raw(old), Signal::SIGQUIT).context("QUIT to the old master")?;
                self.retired.push(old);
                self.pid = new;
                "USR2, then QUIT to the old master"
            }
            Kind::Haproxy => {
                let before = crate::procfs::tree(self.pid);
                self.signal(Signal::SIGUSR2)?;
                let deadline = Instant::now() + Duration::from_secs(20);
                while !crate::procfs::tree(self.pid)
                    .iter()
                    .any(|p| !before.contains(p))
                {
                    if Instant::now() > deadline {
                        bail!("haproxy: no new worker after SIGUSR2:\n{}", self.log_tail());
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                "SIGUSR2 (the master executes its binary again)"
            }
            Kind::Hitch | Kind::Stunnel => {
                let (kind, dir, config, port) =
                    (self.kind, self.dir.clone(), self.config.clone(), self.port);
                self.terminate().await;
                *self = Proxy::spawn(kind, env, dir, config, port, false).await?;
                "restart (no binary upgrade)"
            }
        };
        self.keep_pinned();
        Ok(how)
    }
}

fn read_pid(path: &Path) -> Result<i32> {
    Ok(std::fs::read_to_string(path)?.trim().parse()?)
}

pub struct ControlAnswer {
    pub result: String,
    pub raw: String,
}

/// Asks stayup to reload over its control socket and waits for the outcome.
pub async fn control_reload(socket: &Path) -> Result<ControlAnswer> {
    let v = control_request(socket, "reload").await?;
    Ok(ControlAnswer {
        result: v["result"].as_str().unwrap_or("").to_string(),
        raw: v.to_string(),
    })
}

/// Sends one command over stayup's control socket; its JSON answer.
async fn control_request(socket: &Path, command: &str) -> Result<serde_json::Value> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("{}: cannot connect", socket.display()))?;
    let (r, mut w) = stream.into_split();
    let request = serde_json::json!({ "command": command }).to_string();
    w.write_all(format!("{request}\n").as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    serde_json::from_str(&line).context("control answer")
}
