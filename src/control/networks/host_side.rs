//! A network's host side: its TAP (with the gateway's address and MAC), made for the cores,
//! and its DHCP leases released when it goes.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use super::super::ledger::Change;
use super::super::{netlink, Host};
use super::overlay::{self, Overlay};
use super::{record, Networks, Plan, Up};
use crate::engine::network::{NetId, Network, NetworkSpec};

/// Entries of a network's steering map (a hint: a guest beyond it is handed over between
/// cores). Small, as the map's memory is allocated up front.
const STEERING_ENTRIES: u32 = 1024;

impl Networks {
    /// Makes the host side of `plan` with TAP `tap`, recording each change in `made` first;
    /// the network, each core's queue of its TAP, and the rest of its host side when it spans
    /// (then `tap` names its bridge, and its TAP is another).
    pub(super) async fn make_host_side(
        &mut self,
        plan: &Plan,
        id: NetId,
        tap: &str,
        host: &mut Host,
        made: &mut Vec<Change>,
    ) -> Result<(Arc<Network>, Vec<OwnedFd>, Option<Overlay>), String> {
        let (name, subnet) = (plan.name.as_str(), &plan.subnet);
        let port = match plan.span {
            Some(_) => overlay::port_name(&self.tap, id.slot),
            None => tap.to_string(),
        };
        record(host, made, Change::Tap(port.clone()))?;
        let queues = crate::tap::open_multiqueue_with(&port, self.cores, self.offload.is_some())
            .map_err(|e| e.to_string())?;
        let index = netlink::link_index(&self.handle, &port)
            .await
            .ok_or_else(|| format!("TAP {port} vanished right after creation"))?;
        if let Some(segments) = self.offload {
            netlink::set_gso_max_segs(&self.handle, index, &port, segments)
                .await
                .map_err(|e| e.to_string())?;
        }
        // The same gateway MAC on every host of a farm (see `networks::gateway_mac`): on the
        // TAP, or on the bridge of a spanning network.
        let mac = crate::networks::gateway_mac(name, subnet);
        if plan.span.is_none() {
            netlink::set_mac(&self.handle, index, &port, mac)
                .await
                .map_err(|e| e.to_string())?;
            let change = Change::Address {
                ifname: port.clone(),
                cidr: format!("{}/{}", subnet.gateway(), subnet.prefix),
            };
            record(host, made, change)?;
            netlink::add_address(&self.handle, index, subnet.gateway(), subnet.prefix, &port)
                .await
                .map_err(|e| e.to_string())?;
        }
        record(host, made, Change::LinkUp(port.clone()))?;
        netlink::set_up(&self.handle, index, &port, Some(self.mtu))
            .await
            .map_err(|e| e.to_string())?;
        if let Err(e) = netlink::no_qdisc(&self.handle, index, &port).await {
            log::warn!("network {name}: {e}: it works, with about 6.5 MiB more of kernel memory for its TAP's default queueing");
        }
        // Last of what can fail: the bridge and VXLAN device around the TAP.
        let overlay = match &plan.span {
            Some((vni, peers)) => Some(
                self.make_overlay(plan, (id.slot, index), (*vni, peers), host, made)
                    .await?,
            ),
            None => None,
        };
        let steering =
            crate::steering::Steering::attach_for(self.cores, &queues[0], STEERING_ENTRIES)
                .unwrap_or_else(|e| {
                    log::debug!("network {name}: cannot steer TAP queues by MAC ({e})");
                    None
                });
        let spec = NetworkSpec {
            name: name.to_string(),
            tap: port,
            subnet: Some(*subnet),
            uplink_macs: vec![mac],
            isolate: plan.isolate,
            max_macs_per_client: plan.limits.max_macs_per_client.unwrap_or(self.max_macs),
            steering,
            limits: plan.limits,
            roam: self
                .roaming
                .and_then(|(slice, lease)| slice.roam(plan.dhcp_range, lease)),
            span: overlay.as_ref().map(Overlay::info),
        };
        let net = Network::new(id, spec, self.cores, self.shared.clock.now_ms());
        net.authority.with(|own| {
            for r in &plan.reservations {
                own.reserve(r.mac, r.ip.octets());
            }
        });
        Ok((Arc::new(net), queues, overlay))
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
                .args([up.iface.as_str(), &ip.to_string(), &mac.to_string()])
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
