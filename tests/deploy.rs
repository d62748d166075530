//! Deployment artifacts cannot run here (no Docker engine, no Kubernetes, no systemd as
//! PID 1), so they are checked for what can rot: the manifests parse, the configurations
//! they carry pass `tlspeek check-config`, and ports, paths and signals agree with the
//! configuration and with each other.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn check_config(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, text).unwrap();
    let out = Command::new(exe())
        .arg("check-config")
        // The secrets these configs name exist only where they are deployed.
        .arg("--skip-files")
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn yaml_docs(rel: &str) -> Vec<serde_yaml::Value> {
    let text = read(rel);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .collect()
}

fn kind<'a>(docs: &'a [serde_yaml::Value], k: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"] == k)
        .unwrap_or_else(|| panic!("no {k}"))
}

#[test]
fn kubernetes_manifests_parse_and_agree_with_the_config() {
    let docs = yaml_docs("deploy/kubernetes/tlspeek.yaml");
    let cm = kind(&docs, "ConfigMap");
    let toml = cm["data"]["tlspeek.toml"].as_str().unwrap();
    assert_eq!(
        toml.trim(),
        read("deploy/container.toml").trim(),
        "ConfigMap and deploy/container.toml drifted apart"
    );
    let effective = check_config(toml);
    assert!(
        effective.contains("listen = \"0.0.0.0:3128\""),
        "{effective}"
    );
    let cfg: toml::Table = toml.parse().unwrap();
    let inventory = cfg["inventory"]["path"].as_str().unwrap();
    let token = cfg["admin"]["token_file"].as_str().unwrap();

    let sts = kind(&docs, "StatefulSet");
    let pod = &sts["spec"]["template"];
    let c = &pod["spec"]["containers"][0];
    let ports: Vec<i64> = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [3128, 9748]);
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "9748");
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/path"],
        "/metrics"
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(
        c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep",
        "a preStop wait"
    );
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap();
    assert!(
        grace > 30 + 10,
        "termination grace {grace} s must cover shutdown_grace and preStop"
    );
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let mounted = |name: &str| {
        mounts.iter().find(|m| m["name"] == name).unwrap()["mountPath"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        inventory.starts_with(&(mounted("inventory") + "/")),
        "inventory {inventory} is on the volume"
    );
    assert!(
        token.starts_with(&(mounted("admin-token") + "/")),
        "token {token} comes from the Secret"
    );
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "inventory"
    );

    // Only the proxy port goes beyond the pod.
    let svc = kind(&docs, "Service");
    let svc_ports: Vec<i64> = svc["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(svc_ports, [3128]);

    let pm = yaml_docs("deploy/kubernetes/podmonitor.yaml");
    let ep = &kind(&pm, "PodMonitor")["spec"]["podMetricsEndpoints"][0];
    assert_eq!(
        (ep["port"].as_str(), ep["path"].as_str()),
        (Some("admin"), Some("/metrics"))
    );
}

#[test]
fn systemd_unit_and_its_config_agree() {
    let unit = read("deploy/tlspeek.service");
    let line = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(line("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(line("ProtectSystem"), ["strict"]);
    assert_eq!(line("StateDirectory"), ["tlspeek"]);
    assert_eq!(line("User"), ["tlspeek"]);
    assert_eq!(line("NoNewPrivileges"), ["yes"]);
    assert_eq!(
        line("CapabilityBoundingSet"),
        [""],
        "no capability unless TPROXY is used"
    );
    let exec = line("ExecStart");
    assert!(
        exec[0].contains("--config /etc/tlspeek/tlspeek.toml"),
        "{exec:?}"
    );
    let stop: u64 = line("TimeoutStopSec")[0].parse().unwrap();
    assert!(stop > 30, "TimeoutStopSec must cover shutdown_grace");

    let toml = read("deploy/tlspeek.toml");
    check_config(&toml);
    let cfg: toml::Table = toml.parse().unwrap();
    assert!(
        cfg["inventory"]["path"]
            .as_str()
            .unwrap()
            .starts_with("/var/lib/tlspeek/"),
        "StateDirectory"
    );
    assert!(
        cfg["events"]["path"]
            .as_str()
            .unwrap()
            .starts_with("/var/log/tlspeek/"),
        "LogsDirectory"
    );
    let logrotate = read("deploy/logrotate");
    assert!(
        logrotate.contains(cfg["events"]["path"].as_str().unwrap()) && logrotate.contains("USR1")
    );

    // systemd judges the unit too (.ci/run installs it; it need not be PID 1).
    if require(&["systemd-analyze"]) {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(root().join("deploy/tlspeek.service"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // The binary path does not exist on a build machine; anything else is a real finding.
        let findings: Vec<&str> = err
            .lines()
            .filter(|l| !l.contains("/usr/local/bin/tlspeek") && !l.trim().is_empty())
            .collect();
        assert!(findings.is_empty(), "systemd-analyze verify: {findings:#?}");
    }
}

#[test]
fn dockerfile_ships_a_checked_config_and_drops_root() {
    let d = read("Dockerfile");
    assert!(d.matches("FROM ").count() >= 2, "multi-stage");
    assert!(d.contains("COPY deploy/container.toml /etc/tlspeek/tlspeek.toml"));
    assert!(
        d.contains("check-config --skip-files deploy/container.toml"),
        "the build checks the shipped config"
    );
    assert!(d.contains("USER 10001"), "not root");
    assert!(d.contains("EXPOSE 3128 9748"));
    check_config(&read("deploy/container.toml"));
}
