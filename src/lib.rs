//! stayup: a TLS-terminating TCP proxy that reloads, not restarts.
//!
//! The reload core is usable on its own: [`reloader::load_candidate`] loads
//! and validates a configuration without serving it (what `stayup check`
//! does); [`daemon::Daemon`] runs listeners whose generation the
//! [`reloader::Reloader`] replaces atomically; every reload returns an
//! [`reloader::Outcome`]. [`triggers::start`] adds what `stayup run` has
//! besides SIGHUP: the file watcher and poll, the admin endpoint and
//! systemd notifications, and [`triggers::Background::start_control`] the
//! control socket. [`upgrade`] hands the listening sockets to a new process
//! of the binary (`stayup upgrade`), so that even stayup's own code is
//! replaced without closing a connection.
//!
//! Data flows one way: a trigger asks the reloader; the reloader reads the
//! [`config`], loads the [`material`], builds a [`generation`] and commits it
//! or keeps the old one; the [`proxy`] takes one snapshot of the current
//! generation per connection.
#![forbid(unsafe_code)]

pub mod admin;
pub mod batch;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod generation;
pub mod groups;
pub mod history;
pub mod keyschedule;
pub mod material;
pub mod metrics;
pub mod pipe;
pub mod pki;
pub mod proxy;
pub mod proxy_protocol;
pub mod publish;
pub mod reloader;
pub mod resumption;
pub mod sessions;
pub mod status;
pub mod store;
pub mod suites;
pub mod systemd;
pub mod tickets;
pub mod triggers;
pub mod upgrade;
pub mod watch;
pub mod yamledit;

pub use generation::{Generation, Shared, Trigger};
pub use reloader::{LoadError, Outcome, ReloadHandle, ReloadResult};
