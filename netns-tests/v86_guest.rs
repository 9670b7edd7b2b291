//! The pieces of the v86 tests: whether the assets are there, the 1 MiB file the guests
//! download, and a booting guest (its runner under Node or Chromium, and its serial lines).

// Not every test uses every way to boot a guest.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::harness::*;

pub const BOOT_LIMIT: Duration = Duration::from_secs(240);
/// How long a guest's runner lives: a boot, then an ne2k download's three attempts.
pub const RUN_LIMIT: Duration = Duration::from_secs(640);

pub fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/v86")
}

/// Whether the test can run; prints why not.
pub fn ready(test: &str) -> bool {
    if skip_unless_root(test) {
        return false;
    }
    let dir = e2e_dir();
    let missing: Vec<&str> = [
        "cache/bzImage",
        "cache/initrd.gz",
        "cache/bios.bin",
        "node_modules/v86/build/libv86.mjs",
        "node_modules/ws/package.json",
    ]
    .into_iter()
    .filter(|p| !dir.join(p).exists())
    .collect();
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if missing.is_empty() && node {
        return true;
    }
    tapwire_testkit::skip::skip(
        test,
        &format!("v86 assets missing ({missing:?}, node: {node}); run e2e/v86/setup.sh"),
    );
    false
}

/// A 1 MiB file served over HTTP on the gateway address, and its SHA-256.
pub struct Blob {
    pub server: Proc,
    pub sha256: String,
}

pub fn serve_blob(relay: &Relay) -> Blob {
    serve_blob_at(relay, "10.86.0.1:8000")
}

/// [`serve_blob`] on `listen` (ADDR:PORT; 0.0.0.0 for addresses that do not exist yet, such
/// as a network's gateway before its first client).
pub fn serve_blob_at(relay: &Relay, listen: &str) -> Blob {
    let root = relay.dir.0.join("www");
    std::fs::create_dir_all(&root).expect("www");
    let mut data = vec![0u8; 1024 * 1024];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(root.join("blob"), &data).expect("blob");
    let out = Command::new("sha256sum")
        .arg(root.join("blob"))
        .output()
        .expect("sha256sum");
    let sha256 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    let mut cmd = relay
        .ns
        .cmd(&["busybox", "httpd", "-f", "-p", listen, "-h"]);
    cmd.arg(&root);
    Blob {
        server: Proc::spawn(cmd, relay.dir.0.join("httpd.log")).expect("httpd"),
        sha256,
    }
}

/// A booting v86 guest: its runner process and the serial lines it prints.
pub struct V86Guest {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    pub seen: Vec<String>,
    pub label: String,
    /// Its NIC (`ne2k` or `virtio`): only ne2k may retry a download.
    pub nic: String,
}

impl V86Guest {
    pub fn boot(relay: &Relay, url: &str, nic: &str) -> V86Guest {
        Self::boot_against(relay, url, nic, "10.86.0.1")
    }

    /// Boots a guest whose ping and download go to `host` (port 8000).
    pub fn boot_against(relay: &Relay, url: &str, nic: &str, host: &str) -> V86Guest {
        Self::run(
            "boot.mjs",
            relay,
            &["--relay", url, "--nic", nic, "--host", host],
            nic,
        )
    }

    /// Boots a guest under Node over wss://, trusting the certificate `ca` (the `ws` package
    /// takes Node's CA list, to which NODE_EXTRA_CA_CERTS adds).
    pub fn boot_tls(relay: &Relay, url: &str, nic: &str, ca: &Path) -> V86Guest {
        let args = ["--relay", url, "--nic", nic, "--host", "10.86.0.1"];
        let env = [("NODE_EXTRA_CA_CERTS", ca.as_os_str())];
        Self::run_with("boot.mjs", relay, &args, &env, &format!("{nic} wss"))
    }

    /// Boots a guest in headless Chromium, from a page on `page_host`:`page_port`; `spki`
    /// names the only self-signed certificate it trusts (for wss://).
    pub fn boot_in_browser(
        relay: &Relay,
        url: &str,
        page_host: &str,
        page_port: u16,
        spki: Option<&str>,
    ) -> V86Guest {
        let port = page_port.to_string();
        let mut args = vec![
            "--relay",
            url,
            "--nic",
            "virtio",
            "--host",
            "10.86.0.1",
            "--page-port",
            &port,
            "--page-host",
            page_host,
        ];
        if let Some(spki) = spki {
            args.extend(["--spki", spki]);
        }
        Self::run(
            "browser.mjs",
            relay,
            &args,
            &format!("chromium {page_host}"),
        )
    }

    /// Runs the e2e script `script` with `args` in the relay's namespace.
    pub fn run(script: &str, relay: &Relay, args: &[&str], label: &str) -> V86Guest {
        Self::run_with(script, relay, args, &[], label)
    }

    /// [`V86Guest::run`] with extra environment variables.
    pub fn run_with(
        script: &str,
        relay: &Relay,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
        label: &str,
    ) -> V86Guest {
        Self::run_in(&relay.ns, script, args, env, label)
    }

    /// [`V86Guest::run_with`] with its runner in namespace `ns` (a farm's balancer's).
    pub fn run_in(
        ns: &Netns,
        script: &str,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
        label: &str,
    ) -> V86Guest {
        let script = e2e_dir().join(script).display().to_string();
        let limit = RUN_LIMIT.as_secs().to_string();
        // In a PID namespace of its own: the browser puppeteer starts leaves node's process
        // group (and Chromium's crash handlers their own sessions), so killing node alone left
        // Chromium running for hours. When `unshare` dies, its child (node, PID 1 there) gets
        // SIGKILL, and with it every process of the namespace.
        let mut all = vec![
            "unshare",
            "--fork",
            "--pid",
            "--mount-proc",
            "--kill-child",
            "node",
            script.as_str(),
        ];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--timeout", &limit]);
        let mut cmd = ns.cmd(&all);
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let nic = args
            .windows(2)
            .find(|w| w[0] == "--nic")
            .map_or("virtio", |w| w[1])
            .to_string();
        V86Guest {
            child,
            stdin,
            lines,
            seen: Vec::new(),
            label: label.to_string(),
            nic,
        }
    }

    /// Waits for a line starting with `prefix`; Err with everything seen when the guest fails,
    /// exits or the limit passes.
    pub fn wait_for(&mut self, prefix: &str, limit: Duration) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    println!("[{}] {line}", self.label);
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return Ok(line);
                    }
                    if line.starts_with("TW-FAIL") || line.starts_with("TW-TIMEOUT") {
                        return Err(format!(
                            "{} guest failed waiting for {prefix}: {line}",
                            self.label
                        ));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{} guest: no {prefix} within {limit:?}; saw {:?}",
                        self.label, self.seen
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "{} guest exited before {prefix}; saw {:?}",
                        self.label, self.seen
                    ))
                }
            }
        }
    }

    pub fn send(&mut self, line: &str) {
        let _ = writeln!(self.stdin, "{line}");
    }
}

impl Drop for V86Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
