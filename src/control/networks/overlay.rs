//! A spanning network's host side beyond its TAP (docs/scale-out.md): a bridge named as a
//! network's TAP would be (`TAPn<slot>`, so dnsmasq and the instance's table see it as the
//! network's interface) holding the gateway's address and MAC, with the network's TAP
//! (`TAPt<slot>`) and a VXLAN device (`TAPx<slot>`) on it. The VXLAN device floods to every
//! peer (one all-zeros forwarding entry each) and learns where remote guests are from their
//! frames; the bridge filter (`bridge tapwire_TAP`) keeps the gateway and DHCP on each host.
//! Each local guest's MAC is pinned to the TAP's port as a static entry, once a second from
//! the network's ownership table, so that the bridge (and an EVPN speaker reading it) knows
//! it whether or not the guest ever sent a broadcast.
//!
//! The bridge and the VXLAN device outlive the process: both are ledgered and deleted on
//! removal, at exit and by `tapwire cleanup`. The static entries live on the TAP's port and
//! go with the TAP, so they are not ledgered one by one.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use super::super::ledger::Change;
use super::super::{firewall, netlink, Host};
use super::{record, Networks, Plan, Up};
use crate::config::{Config, VXLAN_PORT};
use crate::switch::Mac;

/// This host's end of every tunnel, from `--span-dev`.
pub(in crate::control) struct SpanHost {
    dev_index: u32,
    local: Ipv4Addr,
    /// The bridge table of the filter at the VXLAN ports.
    table: String,
    nft: Arc<Mutex<()>>,
}

/// The host side of a network that spans, beyond its TAP.
pub(super) struct Overlay {
    bridge: String,
    bridge_index: u32,
    port: String,
    port_index: u32,
    vxlan: String,
    vxlan_index: u32,
    pub(super) vni: u32,
    pub(super) peers: Vec<Ipv4Addr>,
    /// Guests pinned to the TAP's port.
    pinned: HashSet<Mac>,
    /// Said once that a guest could not be pinned.
    warned: bool,
}

/// The name of a spanning network's TAP in slot `slot` (its bridge has the name a TAP would).
pub(super) fn port_name(tap: &str, slot: u16) -> String {
    format!("{tap}t{slot}")
}

fn vxlan_name(tap: &str, slot: u16) -> String {
    format!("{tap}x{slot}")
}

impl SpanHost {
    /// Finds `--span-dev`, checks that a guest frame fits it with VXLAN's 50 bytes, and makes
    /// the bridge filter (ledgered). Returns it with the line that says what spans how.
    pub(in crate::control) async fn start(
        cfg: &Config,
        handle: &rtnetlink::Handle,
        host: &mut Host,
    ) -> Result<Option<(SpanHost, String)>, String> {
        let Some(span) = &cfg.span else {
            return Ok(None);
        };
        let dev = span.dev.to_string();
        let underlay = netlink::overlay::underlay(handle, &dev)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("--span-dev {dev}: no such interface in this network namespace; name the interface that reaches the other hosts"))?;
        let local = underlay.address.ok_or_else(|| {
            format!("--span-dev {dev} has no IPv4 address: give it the address the other hosts reach this one at")
        })?;
        crate::config::fits_underlay(cfg.mtu, &dev, underlay.mtu)?;
        if firewall::find().is_none() {
            return Err(firewall::MISSING.into());
        }
        let table = firewall::table_name(&cfg.tap);
        host.record(Change::NftTable(table.clone()))
            .map_err(|e| e.to_string())?;
        let script = firewall::span::table(&table);
        tokio::task::spawn_blocking(move || firewall::apply(&script))
            .await
            .map_err(|e| format!("the nftables change stopped unexpectedly: {e}"))?
            .map_err(|e| format!("cannot make the bridge filter of spanning networks: {e}"))?;
        let peers: Vec<String> = span
            .peers
            .iter()
            .filter(|p| **p != local)
            .map(ToString::to_string)
            .collect();
        let line = format!(
            "spanning {} over VXLAN (UDP {VXLAN_PORT}) from {local} on {dev} (MTU {}, guests' {} + {})",
            if peers.is_empty() {
                "the declared networks that say so".to_string()
            } else {
                format!("every /n/ network to {}", peers.join(", "))
            },
            underlay.mtu,
            cfg.mtu,
            crate::config::VXLAN_OVERHEAD,
        );
        Ok(Some((
            SpanHost {
                dev_index: underlay.index,
                local,
                table,
                nft: Arc::new(Mutex::new(())),
            },
            line,
        )))
    }

    /// Runs `script` on the bridge table, off the control thread.
    async fn apply(&self, script: String) -> Result<(), String> {
        let lock = self.nft.clone();
        tokio::task::spawn_blocking(move || {
            let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
            firewall::apply(&script)
        })
        .await
        .map_err(|e| format!("the nftables change stopped unexpectedly: {e}"))?
    }
}

impl Networks {
    /// Makes the bridge of `plan` in slot `slot` (spanning to `peers` with `vni`), with its
    /// TAP (index `port_index`, opened) and a VXLAN device on it, each change recorded in
    /// `made` first; the bridge is left up with the gateway's address.
    pub(super) async fn make_overlay(
        &mut self,
        plan: &Plan,
        (slot, port_index): (u16, u32),
        (vni, peers): (u32, &[Ipv4Addr]),
        host: &mut Host,
        made: &mut Vec<Change>,
    ) -> Result<Overlay, String> {
        let Some(span) = self.span.as_ref() else {
            return Err("spanning is not set up (no --span-dev)".into());
        };
        let h = &self.handle;
        let e = |e: netlink::NetlinkError| e.to_string();
        let bridge = &crate::config::network_tap_name(&self.tap, slot);
        let port = &port_name(&self.tap, slot);
        let subnet = &plan.subnet;
        let mac = crate::networks::gateway_mac(&plan.name, subnet);
        record(host, made, Change::Link(bridge.to_string()))?;
        let bridge_index = netlink::overlay::add_bridge(h, bridge, mac, self.mtu)
            .await
            .map_err(e)?;
        record(
            host,
            made,
            Change::Address {
                ifname: bridge.to_string(),
                cidr: format!("{}/{}", subnet.gateway(), subnet.prefix),
            },
        )?;
        netlink::add_address(h, bridge_index, subnet.gateway(), subnet.prefix, bridge)
            .await
            .map_err(e)?;
        netlink::set_master(h, port_index, bridge_index, port)
            .await
            .map_err(e)?;
        let vxlan = vxlan_name(&self.tap, slot);
        record(host, made, Change::Link(vxlan.clone()))?;
        let vxlan_index = netlink::overlay::add_vxlan(
            h,
            &vxlan,
            vni,
            (span.dev_index, span.local, VXLAN_PORT),
            self.mtu,
        )
        .await
        .map_err(e)?;
        netlink::set_master(h, vxlan_index, bridge_index, &vxlan)
            .await
            .map_err(e)?;
        let peers: Vec<Ipv4Addr> = peers.iter().copied().filter(|p| *p != span.local).collect();
        for peer in &peers {
            record(
                host,
                made,
                Change::Fdb {
                    ifname: vxlan.clone(),
                    mac: "00:00:00:00:00:00".into(),
                    dst: peer.to_string(),
                },
            )?;
            netlink::overlay::flood_to(h, vxlan_index, *peer, &vxlan)
                .await
                .map_err(e)?;
        }
        span.apply(firewall::span::elements(
            &span.table,
            &vxlan,
            mac,
            subnet.gateway(),
            "add",
        ))
        .await
        .map_err(|why| format!("cannot filter the gateway at {vxlan}: {why}"))?;
        let overlay = Overlay {
            bridge: bridge.clone(),
            bridge_index,
            port: port.clone(),
            port_index,
            vxlan,
            vxlan_index,
            vni,
            peers,
            pinned: HashSet::new(),
            warned: false,
        };
        for (index, name) in [
            (overlay.vxlan_index, &overlay.vxlan),
            (overlay.bridge_index, &overlay.bridge),
        ] {
            record(host, made, Change::LinkUp(name.clone()))?;
            netlink::set_up(h, index, name, None).await.map_err(e)?;
        }
        Ok(overlay)
    }

    /// Deletes what [`Networks::make_overlay`] made that outlives the process (the links in
    /// `made`) and the network's filter elements; called once its TAP's queues are closed.
    pub(super) async fn remove_overlay(&mut self, name: &str, made: &[Change], up: Option<&Up>) {
        if let (
            Some(span),
            Some(Up {
                overlay: Some(o),
                plan,
                ..
            }),
        ) = (self.span.as_ref(), up)
        {
            let script = firewall::span::elements(
                &span.table,
                &o.vxlan,
                crate::networks::gateway_mac(&plan.name, &plan.subnet),
                plan.subnet.gateway(),
                "delete",
            );
            if let Err(e) = span.apply(script).await {
                log::warn!(
                    "network {name}: cannot take its elements out of the bridge filter: {e}"
                );
            }
        }
        for change in made.iter().rev() {
            let Change::Link(link) = change else { continue };
            let Some(index) = netlink::link_index(&self.handle, link).await else {
                continue;
            };
            if let Err(e) = netlink::del_link(&self.handle, index, link).await {
                log::warn!("network {name}: {e}");
            }
        }
    }

    /// Pins every guest of each spanning network to its TAP's port, and unpins those that
    /// left (a second late at most: called on the idle check).
    pub(in crate::control) async fn pin_guests(&mut self) {
        let handle = self.handle.clone();
        for up in self.up.values_mut() {
            let Some(o) = up.overlay.as_mut() else {
                continue;
            };
            let owned: HashSet<Mac> = up.net.authority.with(|own| own.owned().collect());
            let mut failed = None;
            for mac in owned.difference(&o.pinned).copied().collect::<Vec<_>>() {
                match netlink::overlay::pin(&handle, o.port_index, mac, &o.port).await {
                    Ok(()) => {
                        o.pinned.insert(mac);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            for mac in o.pinned.difference(&owned).copied().collect::<Vec<_>>() {
                match netlink::overlay::unpin(&handle, o.port_index, mac, &o.port).await {
                    Ok(()) => {
                        o.pinned.remove(&mac);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = failed {
                if !o.warned {
                    o.warned = true;
                    log::warn!(
                        "network {}: {e}; other hosts reach such a guest once it sends (tried again every second, said once)",
                        up.net.name
                    );
                }
            }
        }
    }
}

impl Overlay {
    /// What the admin API says of it.
    pub(super) fn info(&self) -> crate::engine::network::SpanInfo {
        crate::engine::network::SpanInfo {
            bridge: self.bridge.clone(),
            vxlan: self.vxlan.clone(),
            vni: self.vni,
            peers: self.peers.clone(),
        }
    }

    /// How the logs describe it.
    pub(super) fn describe(&self) -> String {
        let peers: Vec<String> = self.peers.iter().map(ToString::to_string).collect();
        format!(
            "bridge {} with VXLAN {} (VNI {}) to {}",
            self.bridge,
            self.vxlan,
            self.vni,
            if peers.is_empty() {
                "no peer".to_string()
            } else {
                peers.join(", ")
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spanning_network_s_links_are_named_by_its_slot() {
        assert_eq!(port_name("tapwire0", 12), "tapwire0t12");
        assert_eq!(vxlan_name("tapwire0", 12), "tapwire0x12");
    }
}
