//! Network namespaces the tests make and remove: transparent mode's iptables rules, its
//! servers and clients live and die with them, so nothing reaches the host's network.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Proc, certs, exe};

/// True when the tests run as root (namespaces, iptables).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// A network namespace made (and removed) by the test: transparent mode's iptables rules
/// live and die with it.
pub struct NetNs(pub String);

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        let name = format!("tlspeek-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        assert!(
            Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap()
                .success()
        );
        let ns = NetNs(name);
        assert!(
            ns.cmd("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .unwrap()
                .success()
        );
        ns
    }

    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }

    pub fn listening(&self, port: u16) -> bool {
        let out = self.cmd("ss").args(["-ltnH"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} "))
    }

    /// Connections user "nobody" opens to `dst`:`port` are redirected (`tool` is iptables
    /// or ip6tables, nat OUTPUT) to `to_port`; tlspeek runs as root, so its own upstream
    /// connections are not.
    pub fn redirect_nobody(&self, tool: &str, dst: &str, port: u16, to_port: u16) {
        let rule = format!(
            "OUTPUT -p tcp -m owner --uid-owner nobody -d {dst} --dport {port} -j REDIRECT --to-ports {to_port}"
        );
        assert!(
            self.cmd(tool)
                .args(["-t", "nat", "-A"])
                .args(rule.split(' '))
                .status()
                .unwrap()
                .success()
        );
    }

    /// tlspeek's /metrics from its admin port in this namespace.
    pub fn metrics(&self, admin: u16) -> String {
        let out = self
            .cmd("curl")
            .args(["-s", &format!("http://127.0.0.1:{admin}/metrics")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command run as user "nobody" (whose connections the tests' rules redirect).
    pub fn as_nobody(&self, program: &str) -> Command {
        let mut c = self.cmd("setpriv");
        c.args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            program,
        ]);
        c
    }

    /// `openssl s_server -www` (TLS 1.0 and up, every cipher) on `accept`, once it listens.
    pub fn tls_server(&self, accept: &str, port: u16) -> Proc {
        let c = certs();
        let p = Proc(
            self.cmd("openssl")
                .args(["s_server", "-accept", accept])
                .arg("-cert")
                .arg(&c.crt)
                .arg("-key")
                .arg(&c.key)
                .args([
                    "-www",
                    "-quiet",
                    "-cipher",
                    "ALL:@SECLEVEL=0",
                    "-min_protocol",
                    "TLSv1",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        self.wait_listening(port);
        p
    }

    /// tlspeek with `cfg`, in a mount namespace of its own where `hosts` is /etc/hosts,
    /// once its transparent port listens. Its stderr goes next to `cfg` (`err`).
    pub fn tlspeek(&self, cfg: &Path, hosts: &Path, transparent_port: u16) -> Proc {
        let err = std::fs::File::create(cfg.with_file_name("err")).unwrap();
        let p = Proc(
            self.cmd("unshare")
                .args(["-m", "sh", "-c"])
                .arg(format!(
                    "mount --bind {} /etc/hosts && exec \"$0\" \"$@\"",
                    hosts.display()
                ))
                .arg(exe())
                .args(["run", "--config"])
                .arg(cfg)
                .stdout(Stdio::null())
                .stderr(err)
                .spawn()
                .unwrap(),
        );
        self.wait_listening(transparent_port);
        p
    }

    pub fn wait_listening(&self, port: u16) {
        let end = Instant::now() + Duration::from_secs(10);
        while !self.listening(port) {
            assert!(
                Instant::now() < end,
                "nothing listens on {port} in {}",
                self.0
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
