//! Undoing recorded host changes: at shutdown, after a failed start, and in `tapwire cleanup`
//! for runs that crashed or were killed.

use std::path::Path;
use std::time::Duration;

use super::instance::{self, NetnsId};
use super::ledger::{self, Acquired, Change, Ledger};
use super::netlink;
use crate::processes;
use rustix::process::Signal;

/// How much of a ledger to undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything: the changes were made in this network namespace.
    All,
    /// Only files: the namespace the changes were made in is gone, and with it every
    /// interface change and every process that ran in it.
    FilesOnly,
}

/// Undoes `changes` in reverse order. Changes already gone (the TAP vanished with its process,
/// a file already removed) are skipped. Returns what could not be undone.
pub async fn undo(changes: &[Change], scope: Scope) -> Vec<String> {
    let mut failures = Vec::new();
    if scope == Scope::FilesOnly {
        remove_files(changes, &mut failures);
        return failures;
    }
    let handle = match netlink::connect() {
        Ok(h) => Some(h),
        Err(e) => {
            failures.push(format!(
                "cannot open netlink to undo interface changes: {e}"
            ));
            None
        }
    };
    for change in changes.iter().rev() {
        match change {
            Change::Dnsmasq {
                pid, lease_file, ..
            } => stop_stray_dnsmasq(*pid, lease_file).await,
            Change::File(_) => remove_files(std::slice::from_ref(change), &mut failures),
            Change::Address { ifname, cidr } => {
                let Some(h) = &handle else { continue };
                let Some(index) = netlink::link_index(h, ifname).await else {
                    continue;
                };
                let Some((ip, prefix)) = cidr
                    .split_once('/')
                    .and_then(|(a, p)| Some((a.parse().ok()?, p.parse().ok()?)))
                else {
                    continue;
                };
                if let Err(e) = netlink::del_address(h, index, ip, prefix, ifname).await {
                    failures.push(e.to_string());
                }
            }
            Change::Master { ifname, .. } => {
                let Some(h) = &handle else { continue };
                if let Some(index) = netlink::link_index(h, ifname).await {
                    if let Err(e) = netlink::no_master(h, index, ifname).await {
                        failures.push(e.to_string());
                    }
                }
            }
            Change::Link(name) => {
                let Some(h) = &handle else { continue };
                if let Some(index) = netlink::link_index(h, name).await {
                    if let Err(e) = netlink::del_link(h, index, name).await {
                        failures.push(e.to_string());
                    }
                }
            }
            Change::NftTable(table) => {
                if let Err(e) = super::firewall::delete_table(table) {
                    failures.push(format!("cannot delete nftables table {table}: {e}"));
                }
            }
            Change::Sysctl { path, old } => {
                if let Err(e) = std::fs::write(path, old) {
                    failures.push(format!("cannot restore {} to {old}: {e}", path.display()));
                }
            }
            // The TAP is not persistent: it and its up state vanish with the process; a
            // forwarding entry goes with its device.
            Change::LinkUp(_)
            | Change::Tap(_)
            | Change::Fdb { .. }
            | Change::Owner { .. }
            | Change::Netns(_) => {}
        }
    }
    failures
}

fn remove_files(changes: &[Change], failures: &mut Vec<String>) {
    for change in changes.iter().rev() {
        if let Change::File(path) = change {
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    failures.push(format!("cannot remove {}: {e}", path.display()));
                }
            }
        }
    }
}

/// Stops what is left of a dead run's dnsmasq: its guard if `pid` is still that guard, and
/// any dnsmasq in this network namespace whose command line names this instance's lease file
/// (found in /proc, so a lost pid does not matter). A dnsmasq of another instance has another
/// lease file or another namespace and is never touched.
async fn stop_stray_dnsmasq(pid: u32, lease_file: &Path) {
    let lease_arg = format!("--dhcp-leasefile={}", lease_file.display());
    let here = processes::netns_inode(std::process::id());
    let ours = |p: u32| {
        let names_our_lease = processes::cmdline(p)
            .iter()
            .any(|a| a == lease_arg.as_bytes());
        names_our_lease && here.is_some() && processes::netns_inode(p) == here
    };
    let mut targets: Vec<u32> = Vec::new();
    if ours(pid) {
        targets.push(pid);
    }
    for p in processes::pids() {
        if processes::comm(p).as_deref() == Some("dnsmasq") && ours(p) && !targets.contains(&p) {
            targets.push(p);
        }
    }
    // Processes of this namespace whose command line serves this instance's lease file.
    for p in &targets {
        processes::signal(*p, Signal::TERM);
    }
    for _ in 0..20 {
        if !targets.iter().any(|p| processes::alive(*p)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // They ignored SIGTERM for 2 s.
    for p in &targets {
        processes::signal(*p, Signal::KILL);
    }
}

/// What to do with a dead run's ledger, from where its changes were made.
fn scope_for(
    recorded: Option<NetnsId>,
    here: &NetnsId,
    live: impl Fn(u64) -> bool,
) -> Option<Scope> {
    match recorded {
        // Ledgers without a namespace line predate it; they sit in this namespace's directory.
        None => Some(Scope::All),
        Some(n) if n.is(here) => Some(Scope::All),
        // Same inode, other cookie: that namespace is gone and its inode was reused.
        Some(n) if n.inode == here.inode => Some(Scope::FilesOnly),
        Some(n) if !live(n.inode) => Some(Scope::FilesOnly),
        // Another namespace that still exists: only a cleanup inside it may touch it.
        Some(_) => None,
    }
}

/// `tapwire cleanup`: undoes every ledger under `runtime_dir` (or only those of TAP `tap`)
/// whose owner is gone. Interface changes are undone only for runs of this network namespace;
/// runs of namespaces that are gone have their files removed. Returns a report line per
/// ledger, and whether all went well.
pub async fn cleanup(runtime_dir: &Path, tap: Option<&str>) -> (Vec<String>, bool) {
    let mut report = Vec::new();
    let mut ok = true;
    let here = match NetnsId::current() {
        Ok(n) => n,
        Err(e) => {
            return (
                vec![format!(
                    "cannot tell which network namespace this is (/proc/self/ns/net: {e}); is /proc mounted?"
                )],
                false,
            )
        }
    };
    let live = instance::live_netns_inodes();
    for dir in instance::all_dirs(runtime_dir, tap) {
        let path = Ledger::path_in(&dir);
        if !path.is_file() {
            continue;
        }
        let (ledger, changes) = match Ledger::acquire(&dir) {
            Ok(Acquired::Ours(l, c)) => (l, c),
            Ok(Acquired::Busy(pid)) => {
                let who = pid.map_or("a running tapwire".to_string(), |p| {
                    format!("tapwire (pid {p})")
                });
                let how = pid.map_or(String::new(), |p| {
                    format!("; stop it with `kill {p}` and it cleans up itself")
                });
                report.push(format!(
                    "{}: skipped, {who} is still running{how}",
                    path.display()
                ));
                continue;
            }
            Err(e) => {
                report.push(format!(
                    "{}: cannot open: {e} — run as root",
                    path.display()
                ));
                ok = false;
                continue;
            }
        };
        let recorded = ledger::netns_of(&changes);
        let Some(scope) = scope_for(recorded, &here, |i| live.contains(&i)) else {
            report.push(format!(
                "{}: skipped, made in another network namespace (net:[{}]) that still exists; run `tapwire cleanup` inside it (e.g. `ip netns exec NAME tapwire cleanup`)",
                path.display(),
                recorded.map_or(0, |n| n.inode)
            ));
            continue;
        };
        let failures = undo(&changes, scope).await;
        if failures.is_empty() {
            ledger.remove();
            let count = changes
                .iter()
                .filter(|c| !matches!(c, Change::Owner { .. } | Change::Netns(_)))
                .count();
            report.push(match scope {
                Scope::All => format!("{}: undid {count} recorded changes", path.display()),
                Scope::FilesOnly => format!(
                    "{}: its network namespace is gone (and with it the TAP, addresses and dnsmasq); removed its files",
                    path.display()
                ),
            });
        } else {
            ok = false;
            report.push(format!(
                "{}: could not undo everything: {}",
                path.display(),
                failures.join("; ")
            ));
        }
    }
    if report.is_empty() {
        report.push(format!(
            "nothing to clean up under {}",
            runtime_dir.display()
        ));
    }
    (report, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_namespace_gets_a_full_undo() {
        let here = NetnsId {
            inode: 10,
            cookie: 5,
        };
        let live = |i: u64| i == 10 || i == 11;
        assert_eq!(scope_for(Some(here), &here, live), Some(Scope::All));
        assert_eq!(scope_for(None, &here, live), Some(Scope::All));
        let reused = NetnsId {
            inode: 10,
            cookie: 4,
        };
        assert_eq!(scope_for(Some(reused), &here, live), Some(Scope::FilesOnly));
        let other_live = NetnsId {
            inode: 11,
            cookie: 6,
        };
        assert_eq!(scope_for(Some(other_live), &here, live), None);
        let gone = NetnsId {
            inode: 12,
            cookie: 7,
        };
        assert_eq!(scope_for(Some(gone), &here, live), Some(Scope::FilesOnly));
    }
}
