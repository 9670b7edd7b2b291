//! Child processes of tests and benchmarks, and the one wrapper around a running relay.
//!
//! Every child is stopped by the pid we started (never by name) and reaped on drop. A relay is
//! stopped the way a user stops it (SIGTERM: clients closed, host state undone) and only
//! killed if it hangs.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::counters::Counters;
use crate::netns::Netns;

/// A child process with its output in a log file, killed (SIGKILL) and reaped on drop unless
/// it was waited for.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr going to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> io::Result<Self> {
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {cmd:?}: {e}")))?;
        Ok(Proc {
            child: Some(child),
            log,
        })
    }

    /// Its pid (0 once reaped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Sends `sig` to it, if still running.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Waits up to `limit` for exit; its status (None: still running).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Some(status);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// What it wrote so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Its descendants first, found while it is still their parent: a wrapper such as
            // `timeout` killed alone leaves its child running, reparented to init.
            for pid in descendants(c.id()) {
                // SAFETY: signalling a process our own child started, by pid.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every process descended from `pid` (children, their children, ...), from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            // The parent is the second field after the command, which is in parentheses and
            // may itself hold spaces or parentheses.
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// A `tapwire run` in a namespace.
pub struct RelayProcess {
    pub proc: Proc,
    /// Where its live counters are read: its namespace's path and its `--metrics` address
    /// (None: it has no metrics listener, so counters come from SIGUSR1 summaries).
    metrics: Option<(String, SocketAddr)>,
    /// Summaries in its log already accounted for (read after a SIGUSR1, or there when it was
    /// told to stop): its exit summary is one after them.
    summaries_seen: Cell<usize>,
}

/// How long a relay has to answer for its counters (a scrape, or a SIGUSR1 summary).
pub const COUNTERS_TIMEOUT: Duration = Duration::from_secs(10);

/// The number of counter summaries in a relay's log: one sample line of the open-clients
/// gauge each (its `# HELP`/`# TYPE` lines start with `#`; a relay with `--host-name` labels
/// it with its host in `/metrics`).
fn summaries(log: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.starts_with("tapwire_clients_open ")
                || (l.starts_with("tapwire_clients_open{host=") && !l.contains("core="))
        })
        .count()
}

/// The number of summaries in a relay's log that reached their last line (the total of the
/// last drop reason).
fn whole_summaries(log: &str) -> usize {
    let last = tapwire::counters::DropReason::ALL
        .last()
        .expect("drop reasons")
        .label();
    let prefix = format!("tapwire_drops_total{{reason=\"{last}\"}} ");
    log.lines().filter(|l| l.starts_with(&prefix)).count()
}

/// The `--metrics` address in a relay's arguments, read as the relay reads it.
fn metrics_addr(args: &[String]) -> Option<SocketAddr> {
    let at = args.iter().position(|a| a == "--metrics")?;
    tapwire::config::parse_metrics_addr(args.get(at + 1)?).ok()
}

/// `GET /metrics` at `addr` from inside the namespace at `ns_path`: the body.
pub fn scrape(ns_path: &str, addr: SocketAddr) -> io::Result<String> {
    let ns_path = ns_path.to_string();
    std::thread::spawn(move || -> io::Result<String> {
        crate::netns::enter_path(&ns_path)?;
        let mut s = TcpStream::connect_timeout(&addr, COUNTERS_TIMEOUT)?;
        s.set_read_timeout(Some(COUNTERS_TIMEOUT))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: tapwire\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        match text.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200 ") => Ok(body.to_string()),
            _ => Err(io::Error::other(format!("unexpected answer: {text:.200}"))),
        }
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("scrape thread panicked")))
}

impl RelayProcess {
    /// Runs `ip netns exec NS [wrapper…] BIN run ARGS…` with its output in `log`, and waits
    /// until it relays (or says why it cannot), at most 20 s. With `--metrics` in `args`, its
    /// counters are read from there.
    pub fn start(
        ns: &Netns,
        wrapper: &[&str],
        bin: &Path,
        args: &[String],
        log: PathBuf,
    ) -> io::Result<Self> {
        Self::start_within(ns, wrapper, bin, args, log, Duration::from_secs(20))
    }

    /// [`RelayProcess::start`] that waits at most `limit` (a relay with many networks to make
    /// takes longer).
    pub fn start_within(
        ns: &Netns,
        wrapper: &[&str],
        bin: &Path,
        args: &[String],
        log: PathBuf,
        limit: Duration,
    ) -> io::Result<Self> {
        let bin = bin.display().to_string();
        let mut all: Vec<&str> = wrapper.to_vec();
        all.push(&bin);
        all.push("run");
        let mut cmd = ns.cmd(&all);
        cmd.args(args);
        let mut relay = RelayProcess {
            proc: Proc::spawn(cmd, log)?,
            metrics: metrics_addr(args).map(|a| (ns.path(), a)),
            summaries_seen: Cell::new(0),
        };
        let deadline = Instant::now() + limit;
        loop {
            let text = relay.proc.log_text();
            if text.contains("relaying ws://") {
                return Ok(relay);
            }
            if text.contains("tapwire: ") || text.starts_with("error: ") {
                // The message may still be being written (a run once read only "tapwire: "):
                // all of it is there once the refused relay has exited.
                let _ = relay.proc.wait_exit(Duration::from_secs(5));
                let text = relay.proc.log_text();
                return Err(io::Error::other(format!("relay failed to start:\n{text}")));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "relay did not start within {limit:?}:\n{text}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its pid (`ip netns exec` and the wrappers used here exec their command).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Its counters now: a `/metrics` scrape when it has a metrics listener, else a fresh
    /// SIGUSR1 summary; once stopped, its exit summary (which only a relay run with
    /// `--log-level debug` prints; one at another level ends with a paragraph). Panics when none comes (a hung relay,
    /// or one that died without a summary): a stale reading must never pass for a fresh one.
    #[track_caller]
    pub fn counters(&self) -> Counters {
        self.try_counters().unwrap_or_else(|e| {
            let log = self.proc.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "no fresh counters from the relay: {e}\nlast lines of its log:\n{}",
                tail.join("\n")
            )
        })
    }

    /// [`RelayProcess::counters`], or why there are none.
    pub fn try_counters(&self) -> Result<Counters, String> {
        let log = self.proc.log_text();
        if self.proc.child.is_none() {
            if summaries(&log) <= self.summaries_seen.get() {
                return Err("it exited without printing its exit summary".into());
            }
            return Ok(Counters::parse(&log));
        }
        if let Some((ns, addr)) = &self.metrics {
            let body = scrape(ns, *addr).map_err(|e| format!("scraping {addr}/metrics: {e}"))?;
            let c = Counters::parse(&body);
            if summaries(&body) != 1 {
                return Err(format!(
                    "{addr}/metrics answered without the open-clients gauge"
                ));
            }
            return Ok(c);
        }
        let before = summaries(&log);
        self.proc.signal(libc::SIGUSR1);
        let deadline = Instant::now() + COUNTERS_TIMEOUT;
        loop {
            let text = self.proc.log_text();
            // The drop family comes last in a summary: it is whole once its last reason's
            // total is in.
            let fresh = summaries(&text);
            if fresh > before && whole_summaries(&text) >= fresh {
                self.summaries_seen.set(fresh);
                return Ok(Counters::parse(&text));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no summary within {} s of SIGUSR1",
                    COUNTERS_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it with SIGTERM (killing it if it ignores that for 10 s); its exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.stop_within(Duration::from_secs(10))
    }

    /// [`RelayProcess::stop`] that waits `limit` before killing it (a relay with many
    /// networks takes longer: the kernel unregisters its TAPs one by one).
    pub fn stop_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.proc.child.as_ref()?;
        self.expect_exit();
        self.proc.signal(libc::SIGTERM);
        let status = self.proc.wait_exit(limit);
        if status.is_none() {
            eprintln!("relay ignored SIGTERM for {limit:?}; killing it");
        }
        status
    }

    /// Notes that it is about to be stopped by a signal the caller sends itself (its exit
    /// summary is then the one after this point).
    pub fn expect_exit(&mut self) {
        self.summaries_seen.set(summaries(&self.proc.log_text()));
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_a_wrapper_also_stops_what_it_started() {
        let dir = std::env::temp_dir().join(format!("tapwire-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut cmd = Command::new("timeout");
        cmd.args(["30", "sleep", "30"]);
        let p = Proc::spawn(cmd, dir.join("log")).expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(10);
        let sleeper = loop {
            if let Some(s) = descendants(p.pid()).first() {
                break *s;
            }
            assert!(Instant::now() < deadline, "timeout never started sleep");
            std::thread::sleep(Duration::from_millis(10));
        };
        drop(p);
        // Reaped by init once killed; gone or a zombie within the bound.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{sleeper}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_string()));
            if state.as_deref().is_none_or(|s| s.starts_with('Z')) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sleep {sleeper} outlived its wrapper"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
