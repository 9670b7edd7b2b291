//! The control plane: host state (TAP address or bridge, dnsmasq), the ledger, signals, and
//! the order of start-up and shutdown. Runs on the calling thread with a current-thread
//! tokio runtime; the data plane runs on the engine's core threads.

pub mod api;
pub mod check;
pub mod cleanup;
pub mod dnsmasq;
mod drain;
pub mod firewall;
pub mod instance;
pub mod ledger;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod netlink;
mod networks;
mod proxy;
mod supervise;
mod watch;

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use supervise::{supervise, Watched};

use crate::config::{Config, HostSide};
use crate::counters;
use crate::engine::{Engine, EngineConfig, Features, Shared};
use instance::NetnsId;
use ledger::{Acquired, Change, Ledger};

/// Finds the program `name` in $PATH, then in the sbin directories a non-root $PATH often
/// lacks (Debian puts dnsmasq and nft in /usr/sbin).
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    const SBIN: &[&str] = &["/usr/sbin", "/usr/local/sbin", "/sbin"];
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(std::path::PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A start-up failure, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Tap(#[from] crate::tap::TapError),
    #[error(transparent)]
    Netlink(#[from] netlink::NetlinkError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Asks a running [`crate::run`] to stop; cloneable. With signals, SIGINT and SIGTERM do too.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<(AtomicBool, Notify)>,
    signals: bool,
}

impl Shutdown {
    /// Stops only when [`Shutdown::trigger`] is called.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also stops on SIGINT/SIGTERM, prints counters on SIGUSR1 and reloads the wss://
    /// certificate on SIGHUP.
    pub fn with_signals() -> Self {
        Shutdown {
            signals: true,
            ..Self::default()
        }
    }

    /// Requests the stop.
    pub fn trigger(&self) {
        self.inner.0.store(true, Ordering::Release);
        self.inner.1.notify_one();
    }

    async fn wait(&self) {
        while !self.inner.0.load(Ordering::Acquire) {
            self.inner.1.notified().await;
        }
    }
}

/// What a run left behind for its caller.
pub struct RunReport {
    /// Every counter, in Prometheus text (printed at exit with `--log-level debug`).
    pub summary: String,
    /// What the run did, in one paragraph (printed at exit otherwise).
    pub paragraph: String,
    /// The io_uring features the cores used.
    pub features: Features,
    /// Why the relay stopped by itself, when something it cannot serve without was taken
    /// away (its TAP deleted); None when it was asked to stop.
    pub lost: Option<String>,
}

/// Host changes made so far, mirrored from the ledger, so a failed start or a shutdown undoes
/// exactly them.
pub(crate) struct Host {
    ledger: Ledger,
    changes: Vec<Change>,
}

impl Host {
    pub(crate) fn record(&mut self, change: Change) -> Result<(), RunError> {
        self.ledger.record(&change).map_err(|e| {
            RunError::Setup(format!(
                "cannot write the ledger {}: {e} — {}",
                self.ledger.path().display(),
                runtime_dir_advice(&e)
            ))
        })?;
        self.changes.push(change);
        Ok(())
    }

    /// Forgets `gone`, changes that were undone while the relay runs (a network removed):
    /// neither shutdown nor a later cleanup undoes them again.
    pub(crate) fn forget(&mut self, gone: &[Change]) {
        self.changes.retain(|c| !gone.contains(c));
        if let Err(e) = self.ledger.rewrite(&self.changes) {
            log::warn!(
                "cannot rewrite the ledger {}: {e} (it keeps naming a removed network; undoing it again finds nothing)",
                self.ledger.path().display()
            );
        }
    }

    /// Records `change`, then makes it with `make`. If making it fails, nothing was changed,
    /// so the change is dropped from what this run will undo: a run never undoes what it did
    /// not do (an address that was already there belongs to someone else).
    async fn make<T, E>(
        &mut self,
        change: Change,
        make: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, RunError>
    where
        RunError: From<E>,
    {
        self.record(change)?;
        match make.await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.changes.pop();
                Err(e.into())
            }
        }
    }

    async fn undo(self) {
        for failure in cleanup::undo(&self.changes, cleanup::Scope::All).await {
            log::warn!("cleanup: {failure}");
        }
        self.ledger.remove();
    }
}

/// Runs tapwire until `shutdown` (see [`crate::run`]).
pub fn run(
    cfg: Config,
    listeners: Vec<TcpListener>,
    tls_listeners: Vec<TcpListener>,
    shutdown: Shutdown,
) -> Result<RunReport, RunError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(cfg, (listeners, tls_listeners), shutdown))
}

async fn run_async(
    cfg: Config,
    listeners: (Vec<TcpListener>, Vec<TcpListener>),
    shutdown: Shutdown,
) -> Result<RunReport, RunError> {
    let begun = std::time::Instant::now();
    let tls_count = if cfg.tls.is_some() { cfg.cores } else { 0 };
    if listeners.0.len() != cfg.cores || listeners.1.len() != tls_count {
        return Err(RunError::Setup(format!(
            "{} ws:// and {} wss:// listeners for {} cores: pass one listener per core (and one wss:// listener per core with --listen-tls)",
            listeners.0.len(),
            listeners.1.len(),
            cfg.cores
        )));
    }
    check::raise_fd_limit(
        cfg.clients.max_clients,
        cfg.networks.max_networks * cfg.cores,
    );
    if let Some(advice) = check::neighbour_table_size()
        .and_then(|v| check::neighbour_table_advice(cfg.clients.max_clients, v))
    {
        log::info!("{advice}");
    }
    let netns = NetnsId::current().map_err(|e| {
        RunError::Setup(format!(
            "cannot tell which network namespace this is (/proc/self/ns/net: {e}); is /proc mounted?"
        ))
    })?;
    let dir = instance::dir(&cfg.runtime_dir, &netns, &cfg.tap);
    let ledger = take_ledger(&cfg, &dir, netns).await?;
    let mut host = Host {
        ledger,
        changes: Vec::new(),
    };
    let dnsmasq = match dnsmasq::Launch::for_config(&cfg, &dir) {
        Ok(d) => d,
        Err(e) => {
            host.undo().await;
            return Err(RunError::Setup(e.into()));
        }
    };
    let started = start(&cfg, &mut host, dnsmasq.as_ref(), listeners).await;
    let Started {
        engine,
        shared,
        features,
        dnsmasq: mut child,
        mut watched,
        mut net_events,
    } = match started {
        Ok(parts) => parts,
        Err(e) => {
            host.undo().await;
            return Err(e);
        }
    };
    let mut nets = networks::Networks::new(
        &cfg,
        shared.clone(),
        watched.handle.clone(),
        watched.table.clone(),
    );
    // Spanning first: the declared networks that span need this host's end of the tunnels.
    let made = match nets.start_span(&cfg, &mut host).await {
        Ok(line) => nets
            .make_declared(&cfg.networks.declared, &mut host)
            .await
            .map(|()| line),
        Err(e) => Err(e),
    };
    let span_line = match made {
        Ok(line) => line,
        Err(e) => {
            shared.request_shutdown();
            let _ = tokio::task::spawn_blocking(move || engine.join()).await;
            if let Some(c) = child.as_mut() {
                dnsmasq::stop(c, Duration::from_secs(2)).await;
            }
            host.undo().await;
            return Err(RunError::Setup(e));
        }
    };
    let all_forwards: Vec<crate::config::Forward> = cfg
        .forwards
        .iter()
        .chain(cfg.networks.declared.iter().flat_map(|d| &d.forwards))
        .copied()
        .collect();
    let mut tasks = proxy::start(&all_forwards);
    if let Some(addr) = cfg.metrics {
        let auth = api::AdminAuth {
            token: cfg.admin_token.clone(),
            loopback: addr.ip().is_loopback(),
        };
        let api_note = match (&auth.token, auth.loopback) {
            (Some(_), _) => "the admin API on /api/ with --admin-token",
            (None, true) => "the admin API on /api/",
            (None, false) => "no admin API (not on loopback: give --admin-token FILE)",
        };
        match metrics::start(addr, shared.clone(), auth, cfg.farm.host_name.clone()) {
            Ok(task) => {
                log::info!("metrics on http://{addr}/metrics and /healthz; {api_note}");
                tasks.push(task);
            }
            Err(e) => log::warn!(
                "--metrics {addr}: cannot listen ({e}); no live metrics (counters still print on SIGUSR1 and at exit). Pick a free port"
            ),
        }
    }
    log::info!("{}", networks::start_line(&cfg));
    if let Some(line) = cfg.farm.describe(cfg.host.dhcp().map(|d| d.range)) {
        log::info!("{line}");
    }
    if let Some(line) = span_line {
        log::info!("{line}");
    }
    // Last: whoever waits for this line finds the metrics and forwards already listening.
    log::info!(
        "relaying ws://{}/{} ⇄ TAP {} on {} core(s) (multishot accept/recv/TAP read: {}/{}/{})",
        cfg.listen,
        cfg.tls
            .as_ref()
            .map_or(String::new(), |t| format!(" and wss://{}/", t.listen)),
        cfg.tap,
        cfg.cores,
        features.multishot_accept,
        features.multishot_recv,
        features.multishot_tap_read
    );
    let lost = supervise(
        &cfg,
        &shutdown,
        &shared,
        (dnsmasq.as_ref(), &mut child),
        &mut host,
        &mut watched,
        (&mut nets, &mut net_events),
    )
    .await;
    for p in tasks {
        p.abort();
    }
    log::info!("shutting down: closing clients with 1001");
    shared.request_shutdown();
    let joined = tokio::task::spawn_blocking(move || engine.join()).await;
    if let Some(c) = child.as_mut() {
        dnsmasq::stop(c, Duration::from_secs(2)).await;
    }
    host.undo().await;
    let summary = counters::summary(&shared.counters, &shared.host_counters);
    let paragraph = counters::exit_paragraph(
        &shared.counters,
        &shared.host_counters,
        begun.elapsed(),
        shared
            .peak_clients
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    match joined {
        Ok(Ok(())) => Ok(RunReport {
            summary,
            paragraph,
            features,
            lost,
        }),
        Ok(Err(e)) => Err(RunError::Io(e)),
        Err(e) => Err(RunError::Setup(format!("engine join failed: {e}"))),
    }
}

/// Takes this instance's ledger: refuses when a live run holds it, undoes what a dead run
/// left, and starts this run's record.
async fn take_ledger(
    cfg: &Config,
    dir: &std::path::Path,
    netns: NetnsId,
) -> Result<Ledger, RunError> {
    let (mut ledger, stale) = match Ledger::acquire(dir) {
        Ok(Acquired::Ours(l, stale)) => (l, stale),
        Ok(Acquired::Busy(pid)) => {
            let who = pid.map_or("another tapwire".to_string(), |p| {
                format!("tapwire (pid {p})")
            });
            return Err(RunError::Setup(format!(
                "{who} is already running with TAP {} in this network namespace (ledger {}); stop it first or choose another --tap",
                cfg.tap,
                Ledger::path_in(dir).display()
            )));
        }
        Err(e) => {
            return Err(RunError::Setup(format!(
                "cannot open the ledger {}: {e} — {}",
                Ledger::path_in(dir).display(),
                runtime_dir_advice(&e)
            )))
        }
    };
    if !stale.is_empty() {
        log::warn!(
            "a previous run with TAP {} did not clean up (ledger {}); undoing its changes now",
            cfg.tap,
            ledger.path().display()
        );
        // The directory is keyed by this namespace's inode; a ledger with another cookie was
        // written in an earlier namespace that had the same inode and is gone.
        let scope = match ledger::netns_of(&stale) {
            Some(n) if !n.is(&netns) => cleanup::Scope::FilesOnly,
            _ => cleanup::Scope::All,
        };
        for failure in cleanup::undo(&stale, scope).await {
            log::warn!("cleanup: {failure}");
        }
    }
    ledger.begin(netns).map_err(|e| {
        RunError::Setup(format!(
            "cannot write the ledger {}: {e} — {}",
            ledger.path().display(),
            runtime_dir_advice(&e)
        ))
    })?;
    Ok(ledger)
}

/// What to do when the runtime directory cannot be written.
fn runtime_dir_advice(e: &std::io::Error) -> &'static str {
    match rustix::io::Errno::from_io_error(e) {
        Some(rustix::io::Errno::NOSPC) | Some(rustix::io::Errno::DQUOT) => {
            "the file system of --runtime-dir is full: free some space there, or choose another --runtime-dir"
        }
        Some(rustix::io::Errno::ROFS) => {
            "--runtime-dir is on a read-only file system: choose a writable one (tapwire keeps its ledger of host changes there)"
        }
        _ => "run as root, or choose a writable --runtime-dir",
    }
}

/// A started relay: its cores, what they share, their features, its dnsmasq, and what the
/// supervisor watches for changes by others.
struct Started {
    engine: Engine,
    shared: Arc<Shared>,
    features: Features,
    dnsmasq: Option<tokio::process::Child>,
    watched: Watched,
    /// What the cores ask of the control thread about networks.
    net_events: tokio::sync::mpsc::UnboundedReceiver<crate::engine::network::NetEvent>,
}

async fn start(
    cfg: &Config,
    host: &mut Host,
    dnsmasq: Option<&dnsmasq::Launch>,
    listeners: (Vec<TcpListener>, Vec<TcpListener>),
) -> Result<Started, RunError> {
    host.record(Change::Tap(cfg.tap.to_string()))?;
    let taps = crate::tap::open_multiqueue_with(&cfg.tap, cfg.cores, cfg.offload)?;
    let handle = netlink::connect()?;
    let index = netlink::link_index(&handle, &cfg.tap)
        .await
        .ok_or_else(|| RunError::Setup(format!("TAP {} vanished right after creation", cfg.tap)))?;
    if cfg.offload {
        let segments = crate::offload::max_segments(cfg.max_frame);
        netlink::set_gso_max_segs(&handle, index, &cfg.tap, segments).await?;
    }
    let mut child = None;
    let mut table = None;
    // Addresses behind the uplink, never to be learned on a client port: the TAP's own, and
    // with a bridge the bridge's and its ports' (the TAP is enslaved below, so it is one).
    let mut uplink_macs = vec![crate::tap::mac_of(&taps[0]).map_err(|e| {
        RunError::Setup(format!(
            "cannot read the MAC address of TAP {}: {e}",
            cfg.tap
        ))
    })?];
    match &cfg.host {
        HostSide::Routed { subnet, .. } => {
            let address = Change::Address {
                ifname: cfg.tap.to_string(),
                cidr: format!("{}/{}", subnet.gateway(), subnet.prefix),
            };
            host.make(
                address,
                netlink::add_address(&handle, index, subnet.gateway(), subnet.prefix, &cfg.tap),
            )
            .await?;
            // The same gateway MAC on every host of a farm (see `networks::gateway_mac`).
            let mac = crate::networks::gateway_mac(crate::networks::DEFAULT, subnet);
            netlink::set_mac(&handle, index, &cfg.tap, mac).await?;
            uplink_macs = vec![mac];
            host.record(Change::LinkUp(cfg.tap.to_string()))?;
            netlink::set_up(&handle, index, &cfg.tap, Some(cfg.mtu)).await?;
            table = firewall::start(cfg, host, subnet)?;
            if let Some(launch) = dnsmasq {
                host.record(Change::File(launch.lease_file.clone()))?;
                let c = launch.spawn().map_err(|e| {
                    RunError::Setup(format!("cannot start {}: {e}", launch.binary.display()))
                })?;
                host.record(Change::Dnsmasq {
                    pid: c.id().unwrap_or(0),
                    ifname: cfg.tap.to_string(),
                    lease_file: launch.lease_file.clone(),
                })?;
                child = Some(c);
            }
        }
        HostSide::Bridge(bridge) => {
            let bridge_index = netlink::link_index(&handle, bridge)
                .await
                .ok_or_else(|| RunError::Setup(format!("bridge {bridge} not found: create it (ip link add {bridge} type bridge) or drop --attach-bridge")))?;
            let master = Change::Master {
                ifname: cfg.tap.to_string(),
                bridge: bridge.to_string(),
            };
            host.make(
                master,
                netlink::set_master(&handle, index, bridge_index, &cfg.tap),
            )
            .await?;
            uplink_macs.extend(netlink::bridge_macs(&handle, bridge_index).await?);
            uplink_macs.sort();
            uplink_macs.dedup();
            host.record(Change::LinkUp(cfg.tap.to_string()))?;
            netlink::set_up(&handle, index, &cfg.tap, Some(cfg.mtu)).await?;
        }
    }
    // Host → guest frames on the queue of the guest's core (a hint: without it the kernel's
    // flow hash picks the queue and the cores hand frames over).
    let entries = (cfg.clients.max_clients * cfg.clients.max_macs_per_client).min(1 << 20) as u32;
    let steering = crate::steering::Steering::attach_for(cfg.cores, &taps[0], entries)
        .unwrap_or_else(|e| {
            log::warn!("cannot steer TAP queues by destination MAC ({e}); the kernel's flow hash picks them and frames for a guest on another core are handed over");
            None
        });
    let default_net = crate::engine::network::NetworkSpec {
        name: crate::networks::DEFAULT.to_string(),
        tap: cfg.tap.to_string(),
        subnet: match &cfg.host {
            HostSide::Routed { subnet, .. } => Some(*subnet),
            HostSide::Bridge(_) => None,
        },
        uplink_macs,
        isolate: cfg.isolate,
        max_macs_per_client: cfg.clients.max_macs_per_client,
        steering,
        limits: Default::default(),
        roam: (cfg.host.dhcp()).and_then(|d| cfg.farm.roam(d.range, d.lease_time)),
        span: None,
    };
    let (shared, net_events) = Shared::new(cfg.cores, default_net)?;
    shared.default_net.authority.with(|own| {
        for r in &cfg.reservations {
            own.reserve(r.mac, r.ip.octets());
        }
    });
    let fds = |l: Vec<TcpListener>| l.into_iter().map(OwnedFd::from).collect::<Vec<_>>();
    let engine = Engine::start(
        EngineConfig::from_config(cfg),
        shared.clone(),
        fds(listeners.0),
        fds(listeners.1),
        taps,
    )?;
    let features = match engine.wait_ready() {
        Ok(f) => f,
        Err(e) => {
            shared.request_shutdown();
            let _ = tokio::task::spawn_blocking(move || engine.join()).await;
            return Err(RunError::Setup(format!(
                "{e} — run `tapwire check` to see what this kernel allows"
            )));
        }
    };
    Ok(Started {
        engine,
        shared,
        features,
        dnsmasq: child,
        net_events,
        watched: Watched {
            handle,
            tap_index: index,
            table: table.map(|t| Arc::new(std::sync::Mutex::new(t))),
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn programs_are_found_in_path_and_sbin() {
        assert!(super::find_program("sh").is_some_and(|p| p.is_file()));
        assert_eq!(super::find_program("tapwire-no-such-program"), None);
    }
}
