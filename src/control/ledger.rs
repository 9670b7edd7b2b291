//! The ledger: every host change tapwire makes is appended (and synced) to a file *before*
//! it is made, so that a crashed or killed run can be undone by `tapwire cleanup`.
//!
//! Format: one change per line, `kind arg...`, first lines `owner PID STARTTIME` and
//! `netns INODE COOKIE`. Undo goes through the lines in reverse. The ledger lives in the
//! instance's directory (see [`super::instance`]).
//!
//! The running owner holds an exclusive `flock` on the ledger for its whole life, so a ledger
//! is stale exactly when nobody holds its lock: a run that starts at the same instant as
//! another, or a `tapwire cleanup`, can never take a live run's ledger for a dead one's.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::instance::NetnsId;

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The process that made the changes (pid, start time in clock ticks since boot).
    Owner { pid: u32, start_time: u64 },
    /// The network namespace the changes were made in.
    Netns(NetnsId),
    /// A non-persistent TAP (disappears with its process; recorded for the record).
    Tap(String),
    /// Interface set up.
    LinkUp(String),
    /// A link we made that outlives its process (a spanning network's bridge or VXLAN
    /// device): deleted when undone.
    Link(String),
    /// A forwarding entry of a VXLAN device: frames to `mac` go to `dst` (all zeros: every
    /// flooded frame). It goes with its device.
    Fdb {
        ifname: String,
        mac: String,
        dst: String,
    },
    /// Address put on an interface.
    Address { ifname: String, cidr: String },
    /// Interface enslaved to a bridge.
    Master { ifname: String, bridge: String },
    /// A dnsmasq child (its guard's pid) serving `ifname` with this instance's lease file,
    /// which tells it from any other dnsmasq on the machine.
    Dnsmasq {
        pid: u32,
        ifname: String,
        lease_file: PathBuf,
    },
    /// A file we created.
    File(PathBuf),
    /// An nftables table NAME of this instance: `inet` (host protection, NAT) and `bridge`
    /// (the filter of spanning networks); undoing it deletes it in every family.
    NftTable(String),
    /// A sysctl file (under /proc/sys) we changed, and its value before.
    Sysctl { path: PathBuf, old: String },
}

impl Change {
    /// Its ledger line (without the newline); [`Change::parse`] reads it back.
    pub fn to_line(&self) -> String {
        match self {
            Change::Owner { pid, start_time } => format!("owner {pid} {start_time}"),
            Change::Netns(n) => format!("netns {} {}", n.inode, n.cookie),
            Change::Tap(n) => format!("tap {n}"),
            Change::LinkUp(n) => format!("link-up {n}"),
            Change::Link(n) => format!("link {n}"),
            Change::Fdb { ifname, mac, dst } => format!("fdb {ifname} {mac} {dst}"),
            Change::Address { ifname, cidr } => format!("address {ifname} {cidr}"),
            Change::Master { ifname, bridge } => format!("master {ifname} {bridge}"),
            Change::Dnsmasq {
                pid,
                ifname,
                lease_file,
            } => format!("dnsmasq {pid} {ifname} {}", lease_file.display()),
            Change::File(p) => format!("file {}", p.display()),
            Change::NftTable(t) => format!("nft-table {t}"),
            Change::Sysctl { path, old } => format!("sysctl {old} {}", path.display()),
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
            "netns" => Change::Netns(NetnsId {
                inode: next()?.parse().ok()?,
                cookie: next()?.parse().ok()?,
            }),
            "tap" => Change::Tap(next()?),
            "link-up" => Change::LinkUp(next()?),
            "link" => Change::Link(next()?),
            "fdb" => Change::Fdb {
                ifname: next()?,
                mac: next()?,
                dst: next()?,
            },
            "address" => Change::Address {
                ifname: next()?,
                cidr: next()?,
            },
            "master" => Change::Master {
                ifname: next()?,
                bridge: next()?,
            },
            "dnsmasq" => {
                // The lease file is the rest of the line (a path may hold spaces).
                let mut parts = line.splitn(4, ' ').skip(1);
                Change::Dnsmasq {
                    pid: parts.next()?.parse().ok()?,
                    ifname: parts.next()?.to_string(),
                    lease_file: PathBuf::from(parts.next()?),
                }
            }
            "file" => Change::File(PathBuf::from(line.split_once(' ')?.1)),
            "nft-table" => Change::NftTable(next()?),
            "sysctl" => {
                let mut parts = line.splitn(3, ' ').skip(1);
                Change::Sysctl {
                    old: parts.next()?.to_string(),
                    path: PathBuf::from(parts.next()?),
                }
            }
            _ => return None,
        })
    }
}

/// The changes recorded in a ledger's bytes: every complete line that parses, in order. A
/// record is one write made before its change, so a last line without its newline was cut
/// short by a crash before the change was made: it is left out (a cut path would name another
/// file). Lines that are not UTF-8 or do not parse (a damaged file) are skipped.
pub fn parse_ledger(bytes: &[u8]) -> Vec<Change> {
    let complete = match bytes.iter().rposition(|b| *b == b'\n') {
        Some(end) => &bytes[..end],
        None => return Vec::new(),
    };
    complete
        .split(|b| *b == b'\n')
        .filter_map(|line| Change::parse(std::str::from_utf8(line).ok()?))
        .collect()
}

/// An open, locked ledger: the lock is held until the value is dropped.
pub struct Ledger {
    path: PathBuf,
    file: File,
}

/// The outcome of [`Ledger::acquire`].
pub enum Acquired {
    /// The lock is ours; these are the changes of a dead run that held it before (empty when
    /// there was none).
    Ours(Ledger, Vec<Change>),
    /// A live process holds it (its pid, from the ledger's first line, when readable).
    Busy(Option<u32>),
}

impl Ledger {
    /// Path of the ledger of the instance whose directory is `dir`.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join("ledger")
    }

    /// Opens (creating the directory and file if needed) and locks the ledger in `dir`,
    /// without waiting.
    pub fn acquire(dir: &Path) -> io::Result<Acquired> {
        let path = Self::path_in(dir);
        fs::create_dir_all(dir)?;
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .mode(0o644)
                .open(&path)?;
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    let mut bytes = Vec::new();
                    let _ = file.read_to_end(&mut bytes);
                    let pid = parse_ledger(&bytes).into_iter().find_map(|c| match c {
                        Change::Owner { pid, .. } => Some(pid),
                        _ => None,
                    });
                    return Ok(Acquired::Busy(pid));
                }
                Err(e) => return Err(e.into()),
            }
            // The previous holder removes the file before it lets go of the lock: if the path
            // no longer names the file we locked, start over with whatever is there now.
            let ours = file.metadata()?;
            match fs::metadata(&path) {
                Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => {}
                _ => continue,
            }
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            let stale = parse_ledger(&bytes);
            return Ok(Acquired::Ours(Ledger { path, file }, stale));
        }
    }

    /// Starts this run's record: empties the ledger and records this process and namespace.
    pub fn begin(&mut self, netns: NetnsId) -> io::Result<()> {
        self.file.set_len(0)?;
        let pid = std::process::id();
        self.record(&Change::Owner {
            pid,
            start_time: crate::processes::start_time(pid).unwrap_or(0),
        })?;
        self.record(&Change::Netns(netns))
    }

    /// Appends `change` and syncs it to disk; call before making the change.
    pub fn record(&mut self, change: &Change) -> io::Result<()> {
        // One write for the line and its newline (`writeln!` on a file may make two), so a
        // crash leaves a whole line or none.
        self.file
            .write_all(format!("{}\n", change.to_line()).as_bytes())?;
        self.file.sync_data()
    }

    /// Replaces the record with `changes` (a subset of what it holds: what went away, a
    /// network removed, is left out), keeping the lock. The lines are written over the start
    /// of the file and the file is then cut to them: a crash in between leaves the old tail
    /// behind them, whose first line is cut (and skipped when read) and whose other lines name
    /// changes that were undone already (undoing them again finds nothing).
    pub fn rewrite(&mut self, changes: &[Change]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let text: String = changes
            .iter()
            .map(|c| format!("{}\n", c.to_line()))
            .collect();
        // Another descriptor: ours appends, and a positioned write to it would append too.
        let file = OpenOptions::new().write(true).open(&self.path)?;
        file.write_all_at(text.as_bytes(), 0)?;
        file.set_len(text.len() as u64)?;
        file.sync_data()
    }

    /// Where the ledger is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the ledger and its (then empty) directories, and lets go of the lock.
    pub fn remove(self) {
        let _ = fs::remove_file(&self.path);
        if let Some(dir) = self.path.parent() {
            if fs::remove_dir(dir).is_ok() {
                // The namespace's directory too, once its last instance is gone.
                if let Some(ns_dir) = dir.parent() {
                    let _ = fs::remove_dir(ns_dir);
                }
            }
        }
    }
}

/// The namespace a ledger's changes were made in (absent in ledgers of older versions).
pub fn netns_of(changes: &[Change]) -> Option<NetnsId> {
    changes.iter().find_map(|c| match c {
        Change::Netns(n) => Some(*n),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_ledger_holds_what_is_left_and_records_after_it() {
        let dir =
            std::env::temp_dir().join(format!("tapwire-ledger-rewrite-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let Acquired::Ours(mut ledger, stale) = Ledger::acquire(&dir).unwrap() else {
            panic!("a fresh ledger is ours");
        };
        assert!(stale.is_empty());
        let keep = Change::Tap("t0".into());
        let gone = Change::Tap("t0n1".into());
        for c in [&keep, &gone, &Change::LinkUp("t0n1".into())] {
            ledger.record(c).unwrap();
        }
        ledger.rewrite(std::slice::from_ref(&keep)).unwrap();
        ledger.record(&Change::LinkUp("t0".into())).unwrap();
        let bytes = fs::read(ledger.path()).unwrap();
        assert_eq!(
            parse_ledger(&bytes),
            vec![keep, Change::LinkUp("t0".into())]
        );
        ledger.remove();
        let _ = fs::remove_dir_all(&dir);
    }

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
                lease_file: PathBuf::from("/run/tap wire/net-1/tapwire0/dnsmasq.leases"),
            },
            Change::Netns(NetnsId {
                inode: 4026531840,
                cookie: 1,
            }),
            Change::File(PathBuf::from("/run/tapwire/tapwire0/dnsmasq leases")),
            Change::NftTable("tapwire_tapwire0".into()),
            Change::Link("tapwire0x1".into()),
            Change::Fdb {
                ifname: "tapwire0x1".into(),
                mac: "00:00:00:00:00:00".into(),
                dst: "10.0.0.2".into(),
            },
            Change::Sysctl {
                path: PathBuf::from("/proc/sys/net/ipv4/ip_forward"),
                old: "0".into(),
            },
        ];
        for c in all {
            assert_eq!(Change::parse(&c.to_line()), Some(c));
        }
        assert_eq!(Change::parse("bogus 1"), None);
    }

    #[test]
    fn a_cut_or_damaged_ledger_gives_its_whole_lines_only() {
        let text = b"owner 42 7\nsysctl 0 /proc/sys/net/ipv4/ip_forward\n";
        let whole = parse_ledger(text);
        assert_eq!(whole.len(), 2);
        // Cut anywhere: the complete lines before the cut, never a cut path.
        for cut in 0..text.len() {
            let got = parse_ledger(&text[..cut]);
            let lines = text[..cut].iter().filter(|b| **b == b'\n').count();
            assert_eq!(got, whole[..lines], "cut at {cut}");
        }
        // Garbage and non-UTF-8 lines are skipped, the others kept.
        let damaged = b"owner 42 7\n\xff\xfe garbage\n\0\0\0\nnft-table tapwire_t\n";
        assert_eq!(
            parse_ledger(damaged),
            vec![
                Change::Owner {
                    pid: 42,
                    start_time: 7
                },
                Change::NftTable("tapwire_t".into())
            ]
        );
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tapwire-ledger-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d.join("net-1").join("tapwire0")
    }

    #[test]
    fn a_held_ledger_is_busy_and_names_its_owner() {
        let dir = temp("busy");
        let Acquired::Ours(mut first, stale) = Ledger::acquire(&dir).unwrap() else {
            panic!("fresh ledger is ours");
        };
        assert!(stale.is_empty());
        first
            .begin(NetnsId {
                inode: 1,
                cookie: 2,
            })
            .unwrap();
        // A second open file description (another run, or cleanup) cannot take it, even
        // while it holds nothing but the owner line: "stale" means "no live holder".
        match Ledger::acquire(&dir).unwrap() {
            Acquired::Busy(pid) => assert_eq!(pid, Some(std::process::id())),
            Acquired::Ours(..) => panic!("a held ledger was taken"),
        }
        first.remove();
        assert!(!dir.exists(), "instance directory removed");
        assert!(
            !dir.parent().unwrap().exists(),
            "empty namespace directory removed"
        );
        let Acquired::Ours(again, stale) = Ledger::acquire(&dir).unwrap() else {
            panic!("released ledger is free");
        };
        assert!(stale.is_empty(), "a removed ledger leaves nothing stale");
        again.remove();
        let _ = fs::remove_dir_all(dir.parent().unwrap().parent().unwrap());
    }

    #[test]
    fn a_dead_runs_ledger_is_handed_over_with_its_changes() {
        let dir = temp("stale");
        let Acquired::Ours(mut dead, _) = Ledger::acquire(&dir).unwrap() else {
            panic!()
        };
        dead.begin(NetnsId {
            inode: 7,
            cookie: 9,
        })
        .unwrap();
        dead.record(&Change::LinkUp("tapwire0".into())).unwrap();
        drop(dead); // like a crash: the file stays, the lock goes
        let Acquired::Ours(mut next, stale) = Ledger::acquire(&dir).unwrap() else {
            panic!("a dead run's ledger is free")
        };
        assert_eq!(stale.len(), 3);
        assert_eq!(
            netns_of(&stale),
            Some(NetnsId {
                inode: 7,
                cookie: 9
            })
        );
        next.begin(NetnsId {
            inode: 7,
            cookie: 10,
        })
        .unwrap();
        let text = fs::read_to_string(next.path()).unwrap();
        assert_eq!(
            text.lines().count(),
            2,
            "begin starts a fresh record: {text}"
        );
        next.remove();
        let _ = fs::remove_dir_all(dir.parent().unwrap().parent().unwrap());
    }
}
