//! While the relay runs: signals (stop, counters, certificate reload), dnsmasq kept alive,
//! and the instance's nftables table and TAP kept as they were made when someone else
//! changes them. Every wait is a deadline in one `select!`, so none holds up another.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use super::{dnsmasq, firewall, netlink, networks, watch, Change, Host, Shutdown};
use crate::config::Config;
use crate::counters;
use crate::engine::Shared;

/// Host state made by this instance that others may take away while it runs.
pub(super) struct Watched {
    pub(super) handle: rtnetlink::Handle,
    /// The TAP's interface index (a TAP deleted and made again by someone else under the same
    /// name has another index, and none of the cores' queues).
    pub(super) tap_index: u32,
    /// The nftables table, where the instance has one (locked by the blocking thread that
    /// checks it).
    pub(super) table: Option<Arc<std::sync::Mutex<firewall::Installed>>>,
}

/// Waits for the stop request; meanwhile makes and removes networks as the cores ask and as
/// they go idle, prints counters on SIGUSR1, reloads the certificate on SIGHUP, restarts
/// dnsmasq if it dies, puts back the nftables table and sets the TAP up again when someone
/// else takes them away. Returns why the relay must stop by itself (its
/// TAP deleted), or None when it was asked to stop.
pub(super) async fn supervise(
    cfg: &Config,
    shutdown: &Shutdown,
    shared: &Shared,
    (dnsmasq, child): (Option<&dnsmasq::Launch>, &mut Option<tokio::process::Child>),
    host: &mut Host,
    watched: &mut Watched,
    (nets, net_events): (
        &mut networks::Networks,
        &mut tokio::sync::mpsc::UnboundedReceiver<crate::engine::network::NetEvent>,
    ),
) -> Option<String> {
    let mut term = listen(shutdown.signals, SignalKind::terminate());
    let mut int = listen(shutdown.signals, SignalKind::interrupt());
    let mut usr1 = listen(shutdown.signals, SignalKind::user_defined1());
    let mut hup = listen(shutdown.signals, SignalKind::hangup());
    let mut nft_bell = watched.table.is_some().then(|| {
        watch::Doorbell::nftables()
            .map_err(|e| log::warn!("cannot watch nftables for changes ({e}): if someone deletes or flushes tapwire's table, host protection is gone until tapwire restarts"))
            .ok()
    }).flatten();
    let mut link_bell = watch::Doorbell::links()
        .map_err(|e| log::warn!("cannot watch links for changes ({e}): if someone deletes or sets down TAP {}, tapwire will not notice", cfg.tap))
        .ok();
    // Every wait is a deadline in this one loop, so that none holds up the others (a dnsmasq
    // back-off of 30 s must not delay putting the table back, or a SIGHUP).
    let now = tokio::time::Instant::now;
    // Anything changed before the doorbells were open is looked at first.
    let mut table_check_at = Some(now());
    let mut tap_check_at = Some(now());
    let mut last_restore: Option<tokio::time::Instant> = None;
    let mut dnsmasq_start_at = None;
    let mut restarts = dnsmasq::Restarts::default();
    let mut started = now();
    let mut idle_check = tokio::time::interval(networks::IDLE_CHECK);
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let child_exit = async {
            match child.as_mut() {
                Some(c) => c.wait().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.wait() => return None,
            _ = recv_opt(&mut term) => return None,
            _ = recv_opt(&mut int) => return None,
            _ = recv_opt(&mut usr1) => eprint!("{}", counters::summary(&shared.counters, &shared.host_counters)),
            _ = recv_opt(&mut hup) => reload_certificate(cfg),
            Some(event) = net_events.recv() => nets.on_events(event, net_events, host).await,
            _ = idle_check.tick() => {
                nets.remove_idle().await;
                nets.pin_guests().await;
            }
            // A burst of changes (`nft -f` makes several) is looked at once, 50 ms after it
            // began; and at most once a second after a restore, so that a program that keeps
            // replacing the ruleset does not make tapwire run nft without pause.
            _ = ring_opt(&mut nft_bell) => {
                let soon = now() + SETTLE;
                let calm = last_restore.map_or(soon, |t| t + RESTORE_INTERVAL);
                table_check_at.get_or_insert(soon.max(calm));
            }
            _ = ring_opt(&mut link_bell) => {
                tap_check_at.get_or_insert(now() + SETTLE);
            }
            _ = sleep_until_opt(table_check_at) => {
                table_check_at = None;
                if let Some(b) = nft_bell.as_mut() {
                    b.drain();
                }
                let restored = check_table(shared, watched).await;
                if nets.check_span_filter().await || restored {
                    last_restore = Some(now());
                }
            }
            _ = sleep_until_opt(tap_check_at) => {
                tap_check_at = None;
                if let Some(b) = link_bell.as_mut() {
                    b.drain();
                }
                if let Some(lost) = check_tap(cfg, shared, watched).await {
                    return Some(lost);
                }
            }
            status = child_exit => {
                let delay = restarts.after_exit(started.elapsed());
                log::warn!("dnsmasq exited ({}); starting it again in {delay:?}", status.map_or("unknown status".into(), |s| s.to_string()));
                *child = None;
                dnsmasq_start_at = Some(now() + delay);
            }
            _ = sleep_until_opt(dnsmasq_start_at) => {
                dnsmasq_start_at = None;
                let Some(launch) = dnsmasq else { continue };
                match launch.spawn() {
                    Ok(c) => {
                        if let Err(e) = host.record(Change::Dnsmasq { pid: c.id().unwrap_or(0), ifname: cfg.tap.to_string(), lease_file: launch.lease_file.clone() }) {
                            log::warn!("{e}");
                        }
                        shared.host_counters.dnsmasq_restarts.inc();
                        started = now();
                        log::info!("dnsmasq started again (pid {})", c.id().unwrap_or(0));
                        *child = Some(c);
                    }
                    Err(e) => {
                        // Tried again later, like an exit right after a start.
                        let delay = restarts.after_exit(Duration::ZERO);
                        log::error!("cannot start dnsmasq again: {e}; trying again in {delay:?}");
                        dnsmasq_start_at = Some(now() + delay);
                    }
                }
            }
        }
    }
}

/// How long after a change is first rung the state is looked at (the rest of a burst).
const SETTLE: Duration = Duration::from_millis(50);
/// After the table was made again, the next check waits at least this long.
const RESTORE_INTERVAL: Duration = Duration::from_secs(1);

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Puts the nftables table back if someone else deleted or changed it; whether it did. `nft`
/// runs on a blocking thread (each run is bounded, see `firewall`), so the proxies and the
/// metrics listener on this thread's runtime go on meanwhile.
async fn check_table(shared: &Shared, watched: &mut Watched) -> bool {
    let Some(table) = watched.table.clone() else {
        return false;
    };
    let checked = tokio::task::spawn_blocking(move || {
        let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
        (t.table.clone(), t.check())
    })
    .await;
    let Ok((name, found)) = checked else {
        log::error!("the check of the nftables table stopped unexpectedly");
        return false;
    };
    match found {
        Ok(firewall::Found::Intact) => false,
        Ok(found) => {
            shared.host_counters.firewall_restores.inc();
            log::warn!(
                "the nftables table inet {name} was {} by someone else: made again (host protection, NAT and forwards are tapwire's own rules; to change them, change tapwire's options)",
                if found == firewall::Found::Deleted { "deleted" } else { "changed" }
            );
            true
        }
        Err(e) => {
            log::error!(
                "the nftables table inet {name} was deleted or changed by someone else and cannot be made again ({e}): guests may reach the host's services; restart tapwire"
            );
            false
        }
    }
}

/// Sets the TAP up again if someone else set it down; the reason to stop if it was deleted.
async fn check_tap(cfg: &Config, shared: &Shared, watched: &Watched) -> Option<String> {
    match netlink::link_up(&watched.handle, watched.tap_index).await {
        Ok(Some(true)) => None,
        Ok(Some(false)) => {
            match netlink::set_up(&watched.handle, watched.tap_index, &cfg.tap, None).await {
                Ok(()) => {
                    shared.host_counters.tap_set_up_again.inc();
                    log::warn!(
                        "TAP {} was set down by someone else: set up again (to take the guests off the network, stop tapwire)",
                        cfg.tap
                    );
                }
                Err(e) => log::error!(
                    "TAP {} was set down by someone else and cannot be set up again ({e}): guests have no network until it is up",
                    cfg.tap
                ),
            }
            None
        }
        Ok(None) => Some(format!(
            "TAP {} was deleted by someone else, and with it the guests' network: stopped, and undid the rest of this instance's host state; start tapwire again (systemd's Restart=on-failure does)",
            cfg.tap
        )),
        Err(e) => {
            log::warn!("cannot read the state of TAP {}: {e}", cfg.tap);
            None
        }
    }
}

async fn ring_opt(bell: &mut Option<watch::Doorbell>) {
    match bell {
        Some(b) => b.rung().await,
        None => std::future::pending().await,
    }
}

/// SIGHUP: reads the wss:// certificate and key again; new connections get them, connected
/// clients keep theirs. On error the old certificate stays.
fn reload_certificate(cfg: &Config) {
    let Some(tls) = &cfg.tls else {
        log::info!("SIGHUP: nothing to reload (no --listen-tls)");
        return;
    };
    match tls.certs.reload() {
        Ok(()) => log::info!(
            "SIGHUP: reloaded the certificate {}; new wss:// connections use it",
            tls.certs.cert_path().display()
        ),
        Err(e) => log::error!("SIGHUP: {e}; still using the certificate loaded before"),
    }
}

async fn recv_opt(sig: &mut Option<tokio::signal::unix::Signal>) {
    match sig {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// The signal `kind` as a stream, when this process handles signals (`wanted`); a handler
/// that cannot be installed is said once and the signal is then not waited for.
fn listen(wanted: bool, kind: SignalKind) -> Option<tokio::signal::unix::Signal> {
    if !wanted {
        return None;
    }
    signal(kind)
        .map_err(|e| {
            log::warn!(
                "cannot handle signal {} ({e}): tapwire will not react to it",
                kind.as_raw_value()
            )
        })
        .ok()
}
