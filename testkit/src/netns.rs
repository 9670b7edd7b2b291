//! Network namespaces for tests and benchmarks: uniquely named, deleted on drop, and entered
//! by a thread so the sockets it opens live in them.

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A unique short name (interface and namespace names are limited to 15 bytes).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates a uniquely named namespace with `lo` up.
    pub fn new(prefix: &str) -> std::io::Result<Self> {
        let name = unique(prefix);
        let status = Command::new("ip").args(["netns", "add", &name]).status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "ip netns add {name} failed (needs root)"
            )));
        }
        let ns = Netns { name };
        ns.cmd(&["ip", "link", "set", "lo", "up"]).status()?;
        Ok(ns)
    }

    /// A command run inside the namespace.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Runs `args` inside the namespace; its stdout, or the error with its stderr.
    pub fn run(&self, args: &[&str]) -> std::io::Result<String> {
        let out = self.cmd(args).output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Its path under /run/netns (what [`enter_path`] takes).
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `f` on a new thread inside this namespace (sockets it opens stay in it).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            enter_path(&path).expect("setns");
            f()
        })
        .join()
        .expect("netns thread panicked")
    }
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter_path(path: &str) -> std::io::Result<()> {
    let ns = std::fs::File::open(path)?;
    // SAFETY: setns on an open namespace file; affects only the calling thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the calling thread into the namespace named `name` (from `ip netns add`).
pub fn enter_named(name: &str) -> std::io::Result<()> {
    let path = ["/run/netns", "/var/run/netns"]
        .iter()
        .map(|d| format!("{d}/{name}"))
        .find(|p| std::path::Path::new(p).exists());
    let path = path.ok_or_else(|| {
        std::io::Error::other(format!(
            "network namespace {name} not found (create it with `ip netns add {name}`)"
        ))
    })?;
    enter_path(&path)
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
