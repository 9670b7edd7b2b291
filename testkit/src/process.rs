//! Child processes of tests and benchmarks, and the one wrapper around a running relay.
//!
//! Every child is stopped by the pid we started (never by name) and reaped on drop. A relay is
//! stopped the way a user stops it (SIGTERM: clients closed, host state undone) and only
//! killed if it hangs.

use std::io;
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
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `tapwire run` in a namespace.
pub struct RelayProcess {
    pub proc: Proc,
}

impl RelayProcess {
    /// Runs `ip netns exec NS [wrapper…] BIN run ARGS…` with its output in `log`, and waits
    /// until it relays (or says why it cannot).
    pub fn start(
        ns: &Netns,
        wrapper: &[&str],
        bin: &Path,
        args: &[String],
        log: PathBuf,
    ) -> io::Result<Self> {
        let bin = bin.display().to_string();
        let mut all: Vec<&str> = wrapper.to_vec();
        all.push(&bin);
        all.push("run");
        let mut cmd = ns.cmd(&all);
        cmd.args(args);
        let relay = RelayProcess {
            proc: Proc::spawn(cmd, log)?,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = relay.proc.log_text();
            if text.contains("relaying ws://") {
                return Ok(relay);
            }
            if text.contains("tapwire: ") || text.starts_with("error: ") {
                return Err(io::Error::other(format!("relay failed to start:\n{text}")));
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "relay did not start within 20 s:\n{text}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its pid (`ip netns exec` and the wrappers used here exec their command).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Counters from a fresh SIGUSR1 summary while running, or the exit summary once stopped.
    pub fn counters(&self) -> Counters {
        if self.proc.child.is_some() {
            // One sample line of this gauge per summary (its `# HELP`/`# TYPE` lines start
            // with `#`).
            let summaries = |t: &str| {
                t.lines()
                    .filter(|l| l.starts_with("tapwire_clients_open "))
                    .count()
            };
            let before = summaries(&self.proc.log_text());
            self.proc.signal(libc::SIGUSR1);
            let deadline = Instant::now() + Duration::from_secs(5);
            while summaries(&self.proc.log_text()) == before && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            // The summary is written in one go, but give its last lines a moment.
            std::thread::sleep(Duration::from_millis(100));
        }
        Counters::parse(&self.proc.log_text())
    }

    /// Stops it with SIGTERM (killing it if it ignores that for 10 s); its exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.proc.child.as_ref()?;
        self.proc.signal(libc::SIGTERM);
        let status = self.proc.wait_exit(Duration::from_secs(10));
        if status.is_none() {
            eprintln!("relay ignored SIGTERM for 10 s; killing it");
        }
        status
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
