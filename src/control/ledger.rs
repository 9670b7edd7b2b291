//! The ledger: every host change tapwire makes is appended (and synced) to a file *before*
//! it is made, so that a crashed or killed run can be undone by `tapwire cleanup`.
//!
//! Format: one change per line, `kind arg...`, first line `owner PID STARTTIME`. Undo goes
//! through the lines in reverse. The ledger lives at `RUNTIME_DIR/TAP/ledger`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The process that made the changes (pid, start time in clock ticks since boot).
    Owner { pid: u32, start_time: u64 },
    /// A non-persistent TAP (disappears with its process; recorded for the record).
    Tap(String),
    /// Interface set up.
    LinkUp(String),
    /// Address put on an interface.
    Address { ifname: String, cidr: String },
    /// Interface enslaved to a bridge.
    Master { ifname: String, bridge: String },
    /// A dnsmasq child serving `ifname`.
    Dnsmasq { pid: u32, ifname: String },
    /// A file we created.
    File(PathBuf),
}

impl Change {
    fn to_line(&self) -> String {
        match self {
            Change::Owner { pid, start_time } => format!("owner {pid} {start_time}"),
            Change::Tap(n) => format!("tap {n}"),
            Change::LinkUp(n) => format!("link-up {n}"),
            Change::Address { ifname, cidr } => format!("address {ifname} {cidr}"),
            Change::Master { ifname, bridge } => format!("master {ifname} {bridge}"),
            Change::Dnsmasq { pid, ifname } => format!("dnsmasq {pid} {ifname}"),
            Change::File(p) => format!("file {}", p.display()),
        }
    }

    /// Parses one ledger line.
    pub fn parse(line: &str) -> Option<Change> {
        let mut words = line.split_whitespace();
        let kind = words.next()?;
        let mut next = || words.next().map(str::to_string);
        Some(match kind {
            "owner" => Change::Owner {
                pid: next()?.parse().ok()?,
                start_time: next()?.parse().ok()?,
            },
            "tap" => Change::Tap(next()?),
            "link-up" => Change::LinkUp(next()?),
            "address" => Change::Address {
                ifname: next()?,
                cidr: next()?,
            },
            "master" => Change::Master {
                ifname: next()?,
                bridge: next()?,
            },
            "dnsmasq" => Change::Dnsmasq {
                pid: next()?.parse().ok()?,
                ifname: next()?,
            },
            "file" => Change::File(PathBuf::from(line.split_once(' ')?.1)),
            _ => return None,
        })
    }
}

/// An open ledger being written by the running process.
pub struct Ledger {
    path: PathBuf,
    file: File,
}

impl Ledger {
    /// Path of the ledger for TAP `tap` under `runtime_dir`.
    pub fn path_for(runtime_dir: &Path, tap: &str) -> PathBuf {
        runtime_dir.join(tap).join("ledger")
    }

    /// Creates a new ledger (the directory too) and records this process as its owner.
    pub fn create(runtime_dir: &Path, tap: &str) -> io::Result<Self> {
        let path = Self::path_for(runtime_dir, tap);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        let mut ledger = Ledger { path, file };
        let pid = std::process::id();
        ledger.record(&Change::Owner {
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
        })?;
        Ok(ledger)
    }

    /// Appends `change` and syncs it to disk; call before making the change.
    pub fn record(&mut self, change: &Change) -> io::Result<()> {
        writeln!(self.file, "{}", change.to_line())?;
        self.file.sync_data()
    }

    /// Where the ledger is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a ledger's changes in order.
pub fn read(path: &Path) -> io::Result<Vec<Change>> {
    Ok(fs::read_to_string(path)?
        .lines()
        .filter_map(Change::parse)
        .collect())
}

/// Start time (field 22 of /proc/PID/stat) of a process, to tell it from a later one that
/// reuses its pid.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it follow the last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the owner recorded in `changes` is still running.
pub fn owner_alive(changes: &[Change]) -> Option<u32> {
    changes.iter().find_map(|c| match c {
        Change::Owner { pid, start_time } if process_start_time(*pid) == Some(*start_time) => {
            Some(*pid)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let all = [
            Change::Owner {
                pid: 42,
                start_time: 7,
            },
            Change::Tap("tapwire0".into()),
            Change::LinkUp("tapwire0".into()),
            Change::Address {
                ifname: "tapwire0".into(),
                cidr: "10.86.0.1/16".into(),
            },
            Change::Master {
                ifname: "tapwire0".into(),
                bridge: "br0".into(),
            },
            Change::Dnsmasq {
                pid: 99,
                ifname: "tapwire0".into(),
            },
            Change::File(PathBuf::from("/run/tapwire/tapwire0/dnsmasq leases")),
        ];
        for c in all {
            assert_eq!(Change::parse(&c.to_line()), Some(c));
        }
        assert_eq!(Change::parse("bogus 1"), None);
    }

    #[test]
    fn own_process_is_alive() {
        let me = std::process::id();
        let changes = [Change::Owner {
            pid: me,
            start_time: process_start_time(me).unwrap(),
        }];
        assert_eq!(owner_alive(&changes), Some(me));
        let stale = [Change::Owner {
            pid: me,
            start_time: 1,
        }];
        assert_eq!(owner_alive(&stale), None);
    }
}
