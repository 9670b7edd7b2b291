//! Undoing recorded host changes: at shutdown, after a failed start, and in `tapwire cleanup`
//! for runs that crashed or were killed.

use std::path::Path;
use std::time::Duration;

use super::ledger::{self, Change};
use super::netlink;

/// Undoes `changes` in reverse order. Changes already gone (the TAP vanished with its process,
/// a file already removed) are skipped. Returns what could not be undone.
pub async fn undo(changes: &[Change]) -> Vec<String> {
    let mut failures = Vec::new();
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
            Change::Dnsmasq { pid, ifname } => stop_stray_dnsmasq(*pid, ifname).await,
            Change::File(path) => {
                if let Err(e) = std::fs::remove_file(path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        failures.push(format!("cannot remove {}: {e}", path.display()));
                    }
                }
            }
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
            // The TAP is not persistent: it and its up state vanish with the process.
            Change::LinkUp(_) | Change::Tap(_) | Change::Owner { .. } => {}
        }
    }
    failures
}

/// Stops what is left of a dead run's dnsmasq serving `ifname`: its guard if `pid` is still
/// that guard, and any dnsmasq whose command line names `--interface=IFNAME` and a lease file
/// under tapwire's runtime directory (found in /proc, so a lost pid does not matter).
async fn stop_stray_dnsmasq(pid: u32, ifname: &str) {
    let interface = format!("--interface={ifname}");
    let ours = |p: u32| {
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline);
        text.contains("dnsmasq")
            && text.split('\0').any(|a| a == interface)
            && text.contains("--dhcp-leasefile=")
    };
    let mut targets: Vec<u32> = Vec::new();
    if ours(pid) {
        targets.push(pid);
    }
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            if comm.trim() == "dnsmasq" && ours(p) && !targets.contains(&p) {
                targets.push(p);
            }
        }
    }
    for p in &targets {
        // SAFETY: signalling a process whose command line shows it serves this run's TAP.
        unsafe { libc::kill(*p as libc::pid_t, libc::SIGTERM) };
    }
    for _ in 0..20 {
        if targets
            .iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for p in &targets {
        // SAFETY: as above; it ignored SIGTERM for 2 s.
        unsafe { libc::kill(*p as libc::pid_t, libc::SIGKILL) };
    }
}

/// Removes a ledger and its directory (if empty).
pub fn remove_ledger(path: &Path) {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// `tapwire cleanup`: undoes every ledger under `runtime_dir` (or only `tap`'s) whose owner
/// is gone. Returns a report line per ledger, and whether all went well.
pub async fn cleanup(runtime_dir: &Path, tap: Option<&str>) -> (Vec<String>, bool) {
    let mut report = Vec::new();
    let mut ok = true;
    let ledgers: Vec<std::path::PathBuf> = match tap {
        Some(t) => vec![ledger::Ledger::path_for(runtime_dir, t)],
        None => std::fs::read_dir(runtime_dir)
            .map(|d| d.flatten().map(|e| e.path().join("ledger")).collect())
            .unwrap_or_default(),
    };
    for path in ledgers.into_iter().filter(|p| p.is_file()) {
        let changes = match ledger::read(&path) {
            Ok(c) => c,
            Err(e) => {
                report.push(format!("{}: cannot read: {e}", path.display()));
                ok = false;
                continue;
            }
        };
        if let Some(pid) = ledger::owner_alive(&changes) {
            report.push(format!("{}: skipped, tapwire (pid {pid}) is still running; stop it with `kill {pid}` and it cleans up itself", path.display()));
            continue;
        }
        let failures = undo(&changes).await;
        if failures.is_empty() {
            remove_ledger(&path);
            report.push(format!(
                "{}: undid {} recorded changes",
                path.display(),
                changes.len().saturating_sub(1)
            ));
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
