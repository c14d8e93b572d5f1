//! The shipped deployment files are valid: the configuration embedded in
//! the Kubernetes ConfigMap passes `stayup check` with the file layout the
//! projected volume produces, and the systemd unit runs the commands that
//! exist.

mod common;

use common::*;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

fn repo_file(rel: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn kubernetes_configmap_config_passes_check_in_the_projected_layout() {
    let cm = repo_file("deploy/kubernetes/configmap.yaml");
    let (_, block) = cm
        .split_once("  stayup.yaml: |\n")
        .expect("stayup.yaml key");
    let config: String = block
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();

    // Lay the files out as the projected volume's items do.
    let deployment = repo_file("deploy/kubernetes/deployment.yaml");
    assert!(deployment.contains("path: stayup.yaml"));
    assert!(deployment.contains("path: certs/web.pem"));
    assert!(deployment.contains("path: certs/web.key"));
    assert!(!deployment.contains("subPath:"), "subPath breaks updates");
    let site = Site::new();
    site.cert("web", &["localhost"]);
    site.publish(&config);
    // The kubelet writes the files as root with the volume's defaultMode
    // (and group read for the pod's fsGroup): the key must pass as it is,
    // with no exception in the configuration. Only root can make a file
    // that root owns.
    assert!(deployment.contains("defaultMode: 0440"));
    assert!(!config.contains("allow_insecure_key_permissions"));
    let key = site.path("certs/web.key");
    if std::fs::metadata(&key).expect("stat").uid() == 0 {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o440)).expect("chmod");
    }
    let (code, out, err) = stayup(&["check", "--config", site.config.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("listener web: 0.0.0.0:8443"), "{out}");
}

#[test]
fn systemd_unit_uses_notify_reload_and_real_commands() {
    let unit = repo_file("contrib/systemd/stayup.service");
    assert!(unit.contains("\nType=notify-reload\n"));
    // The process an upgrade starts announces itself as MAINPID=.
    assert!(unit.contains("\nNotifyAccess=all\n"));
    assert!(unit.contains("ExecStart=/usr/local/bin/stayup run --config "));
    assert!(unit.contains("ExecStartPre=/usr/local/bin/stayup check --config "));
    let notes = repo_file("contrib/systemd/README.md");
    assert!(notes.contains("Type=notify\n"));
    assert!(notes.contains("ExecReload=/usr/local/bin/stayup reload --config "));
}
