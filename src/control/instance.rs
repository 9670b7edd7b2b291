//! What makes one tapwire instance: the pair (network namespace, TAP name). Two relays in two
//! namespaces may both use `tapwire0` with the default runtime directory; their state lives
//! in `RUNTIME_DIR/net-INODE/TAP/`, where INODE is the namespace's nsfs inode.
//!
//! An inode number may be reused once its namespace is gone, so the ledger also records the
//! namespace's cookie (`SO_NETNS_COOKIE`, never reused while the machine runs): a ledger whose
//! inode matches but whose cookie does not belongs to a namespace that no longer exists.

use std::collections::HashSet;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::processes;

/// A network namespace: its nsfs inode and its cookie (0 when the kernel has none, < 5.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetnsId {
    pub inode: u64,
    pub cookie: u64,
}

impl NetnsId {
    /// The namespace this process runs in.
    pub fn current() -> io::Result<NetnsId> {
        let inode = std::fs::metadata("/proc/self/ns/net")?.ino();
        Ok(NetnsId {
            inode,
            cookie: current_cookie().unwrap_or(0),
        })
    }

    /// Whether `self` (recorded by some run) is the namespace `here`.
    pub fn is(&self, here: &NetnsId) -> bool {
        self.inode == here.inode && (self.cookie == here.cookie || self.cookie == 0)
    }
}

/// `SO_NETNS_COOKIE` of a throwaway socket.
fn current_cookie() -> Option<u64> {
    let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::DGRAM, None).ok()?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt on a socket we own, writing at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cookie)
}

/// Inodes of every network namespace that still exists as far as we can see: those of running
/// processes and those bind-mounted under /run/netns (`ip netns add`).
pub fn live_netns_inodes() -> HashSet<u64> {
    let mut live: HashSet<u64> = processes::pids()
        .filter_map(processes::netns_inode)
        .collect();
    for entry in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(m) = std::fs::metadata(entry.path()) {
            live.insert(m.ino());
        }
    }
    live
}

/// The state directory of instance (`netns`, `tap`) under `runtime_dir`.
pub fn dir(runtime_dir: &Path, netns: &NetnsId, tap: &str) -> PathBuf {
    runtime_dir.join(format!("net-{}", netns.inode)).join(tap)
}

/// Every instance directory under `runtime_dir` (any namespace), only those named `tap` if
/// given.
pub fn all_dirs(runtime_dir: &Path, tap: Option<&str>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for ns in std::fs::read_dir(runtime_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let is_netns = ns
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("net-"));
        if !is_netns {
            continue;
        }
        for inst in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            if tap.is_none_or(|t| inst.file_name() == t) {
                dirs.push(inst.path());
            }
        }
    }
    dirs.sort();
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_namespace_is_live_and_keyed_by_inode() {
        let here = NetnsId::current().unwrap();
        assert!(live_netns_inodes().contains(&here.inode));
        assert_eq!(processes::netns_inode(std::process::id()), Some(here.inode));
        let d = dir(Path::new("/run/tapwire"), &here, "tapwire0");
        assert_eq!(
            d,
            PathBuf::from(format!("/run/tapwire/net-{}/tapwire0", here.inode))
        );
        let reused = NetnsId {
            inode: here.inode,
            cookie: here.cookie + 1,
        };
        assert!(here.is(&here));
        assert!(
            here.cookie == 0 || !reused.is(&here),
            "a reused inode is not the same namespace"
        );
    }

    #[test]
    fn all_dirs_finds_instances_of_every_namespace() {
        let root = std::env::temp_dir().join(format!("tapwire-inst-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["net-1/tapwire0", "net-2/tapwire0", "net-2/other", "stray/x"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let all = all_dirs(&root, None);
        assert_eq!(all.len(), 3);
        let named = all_dirs(&root, Some("tapwire0"));
        assert_eq!(
            named,
            vec![root.join("net-1/tapwire0"), root.join("net-2/tapwire0")]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
