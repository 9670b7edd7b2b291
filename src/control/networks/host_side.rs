//! A network's host side: its TAP (with the gateway's address and MAC), made for the cores,
//! and its DHCP leases released when it goes.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use super::super::ledger::Change;
use super::super::{netlink, Host};
use super::{Networks, Plan, Up};
use crate::engine::network::{NetId, Network, NetworkSpec};

/// Entries of a network's steering map (a hint: a guest beyond it is handed over between
/// cores). Small, as the map's memory is allocated up front.
const STEERING_ENTRIES: u32 = 1024;

impl Networks {
    /// Makes the host side of `plan` with TAP `tap`, recording each change in `made` first;
    /// the network and each core's queue of its TAP.
    pub(super) async fn make_host_side(
        &mut self,
        plan: &Plan,
        id: NetId,
        tap: &str,
        host: &mut Host,
        made: &mut Vec<Change>,
    ) -> Result<(Arc<Network>, Vec<OwnedFd>), String> {
        let (name, subnet) = (plan.name.as_str(), &plan.subnet);
        let mut record = |host: &mut Host, change: Change| {
            host.record(change.clone()).map_err(|e| e.to_string())?;
            made.push(change);
            Ok::<(), String>(())
        };
        record(host, Change::Tap(tap.to_string()))?;
        let queues = crate::tap::open_multiqueue(tap, self.cores).map_err(|e| e.to_string())?;
        let index = netlink::link_index(&self.handle, tap)
            .await
            .ok_or_else(|| format!("TAP {tap} vanished right after creation"))?;
        // The same gateway MAC on every host of a farm (see `networks::gateway_mac`).
        let mac = crate::networks::gateway_mac(name, subnet);
        netlink::set_mac(&self.handle, index, tap, mac)
            .await
            .map_err(|e| e.to_string())?;
        record(
            host,
            Change::Address {
                ifname: tap.to_string(),
                cidr: format!("{}/{}", subnet.gateway(), subnet.prefix),
            },
        )?;
        netlink::add_address(&self.handle, index, subnet.gateway(), subnet.prefix, tap)
            .await
            .map_err(|e| e.to_string())?;
        record(host, Change::LinkUp(tap.to_string()))?;
        netlink::set_up(&self.handle, index, tap, Some(self.mtu))
            .await
            .map_err(|e| e.to_string())?;
        if let Err(e) = netlink::no_qdisc(&self.handle, index, tap).await {
            log::warn!("network {name}: {e}: it works, with about 6.5 MiB more of kernel memory for its TAP's default queueing");
        }
        let steering = if self.cores > 1 {
            match crate::steering::Steering::attach(&queues[0], STEERING_ENTRIES) {
                Ok(s) => Some(s),
                Err(e) => {
                    log::debug!("network {name}: cannot steer TAP queues by MAC ({e})");
                    None
                }
            }
        } else {
            None
        };
        let spec = NetworkSpec {
            name: name.to_string(),
            tap: tap.to_string(),
            subnet: Some(*subnet),
            uplink_macs: vec![mac],
            isolate: plan.isolate,
            max_macs_per_client: plan.limits.max_macs_per_client.unwrap_or(self.max_macs),
            steering,
            limits: plan.limits,
            roam: self
                .lease_time
                .and_then(|lease| self.farm.roam(plan.dhcp_range, lease)),
        };
        let net = Network::new(id, spec, self.cores, self.shared.clock.now_ms());
        net.authority.with(|own| {
            for r in &plan.reservations {
                own.reserve(r.mac, r.ip.octets());
            }
        });
        Ok((Arc::new(net), queues))
    }

    /// Asks dnsmasq to forget the leases of `up`'s guests (DHCP releases on its TAP, with
    /// dnsmasq-utils' `dhcp_release`), so that its block comes back to the next network clean.
    pub(super) async fn release_leases(&mut self, up: &Up) {
        let now = self.shared.clock.now_ms();
        let leases = up.net.authority.with(|own| own.leases(now));
        if leases.is_empty() {
            return;
        }
        let Some(tool) = super::super::find_program("dhcp_release") else {
            if !self.warned_no_release {
                self.warned_no_release = true;
                log::warn!("dhcp_release not found: leases of removed networks stay in dnsmasq until they expire — install it with `apt-get install dnsmasq-utils`");
            }
            return;
        };
        for (mac, ip) in leases {
            let ip = std::net::Ipv4Addr::from(ip);
            let run = tokio::process::Command::new(&tool)
                .args([up.tap.as_str(), &ip.to_string(), &mac.to_string()])
                .kill_on_drop(true)
                .status();
            match tokio::time::timeout(Duration::from_secs(5), run).await {
                Ok(Ok(status)) if status.success() => {}
                other => log::warn!(
                    "network {}: cannot release the lease of {ip} ({mac}): {other:?}",
                    up.net.name
                ),
            }
        }
    }
}
