//! A spanning network's host side beyond its TAP (docs/scale-out.md): a bridge named as a
//! network's TAP would be (`TAPn<slot>`, so dnsmasq and the instance's table see it as the
//! network's interface) holding the gateway's address and MAC, with the network's TAP
//! (`TAPt<slot>`) and a VXLAN device (`TAPx<slot>`) on it. The VXLAN device floods to every
//! peer (one all-zeros forwarding entry each) and learns where remote guests are from their
//! frames; the bridge filter (`bridge tapwire_TAP`) keeps the gateway and DHCP on each host.
//! Each local guest's MAC is pinned to the TAP's port as a static entry, once a second from
//! the network's ownership table, so that the bridge (and an EVPN speaker reading it) knows
//! it whether or not the guest ever sent a broadcast; and announced once to the peers with a
//! RARP broadcast from its MAC sent out of the VXLAN device (as a hypervisor announces a VM
//! after a migration), so that their VXLAN devices learn it is here, also when it was on
//! another host before.
//!
//! The bridge and the VXLAN device outlive the process: both are ledgered and deleted on
//! removal, at exit and by `tapwire cleanup`. The static entries live on the TAP's port and
//! go with the TAP, so they are not ledgered one by one.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use super::super::ledger::Change;
use super::super::{firewall, netlink, Host};
use super::{record, Networks, Plan};
use crate::config::{Config, Subnet, VXLAN_PORT};
use crate::switch::Mac;

/// This host's end of every tunnel, from `--span-dev`.
pub(in crate::control) struct SpanHost {
    dev_index: u32,
    local: Ipv4Addr,
    /// The bridge table of the filter at the VXLAN ports: its name, the script that makes
    /// it empty, each VXLAN port's elements (the script that adds them), and its listing as
    /// last made (counters left out), to find out when someone else changed it.
    table: String,
    script: String,
    elements: HashMap<String, String>,
    listing: String,
    /// A packet socket that sends the announcements out of the VXLAN devices.
    announcer: Option<OwnedFd>,
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

/// Forgets the last record of `made` (a link whose making failed: nothing was made, and a
/// link of that name that exists is someone else's); the error, said.
fn unrecord(host: &mut Host, made: &mut Vec<Change>, err: netlink::NetlinkError) -> String {
    if let Some(change) = made.pop() {
        host.forget(&[change]);
    }
    err.to_string()
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
        let mut end = SpanHost {
            dev_index: underlay.index,
            local,
            table,
            script: script.clone(),
            elements: HashMap::new(),
            listing: String::new(),
            announcer: None,
        };
        end.apply(script)
            .await
            .map_err(|e| format!("cannot make the bridge filter of spanning networks: {e}"))?;
        end.relist().await;
        end.announcer = match rustix::net::socket(
            rustix::net::AddressFamily::PACKET,
            rustix::net::SocketType::RAW,
            None,
        ) {
            Ok(fd) => Some(fd),
            Err(e) => {
                log::warn!("spanning: cannot open a packet socket ({e}): guests are not announced to the other hosts, which learn where a guest is from the frames it sends");
                None
            }
        };
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
        Ok(Some((end, line)))
    }

    /// Runs `script` (nft), off the control thread.
    async fn apply(&self, script: String) -> Result<(), String> {
        tokio::task::spawn_blocking(move || firewall::apply(&script))
            .await
            .map_err(|e| format!("the nftables change stopped unexpectedly: {e}"))?
    }

    /// The table as nft lists it now, its counters left out (they move with every frame).
    async fn list(&self) -> Result<String, String> {
        let table = self.table.clone();
        let text = tokio::task::spawn_blocking(move || firewall::list("bridge", &table))
            .await
            .map_err(|e| format!("the nftables listing stopped unexpectedly: {e}"))??;
        Ok(firewall::span::without_counters(&text))
    }

    /// Takes the listing our own change left, to compare later ones with.
    async fn relist(&mut self) {
        if let Ok(listing) = self.list().await {
            self.listing = listing;
        }
    }

    /// Puts in the elements of VXLAN port `vxlan` (gateway `gw_ip` at `gw_mac`).
    async fn add_elements(
        &mut self,
        vxlan: &str,
        gw_mac: Mac,
        gw_ip: Ipv4Addr,
    ) -> Result<(), String> {
        let script = firewall::span::elements(&self.table, vxlan, gw_mac, gw_ip, "add");
        self.apply(script.clone()).await?;
        self.elements.insert(vxlan.to_string(), script);
        self.relist().await;
        Ok(())
    }

    /// Takes out the elements of VXLAN port `vxlan`, if it has any.
    async fn remove_elements(&mut self, vxlan: &str) -> Result<(), String> {
        let Some(added) = self.elements.remove(vxlan) else {
            return Ok(());
        };
        let result = self
            .apply(added.replace("add element", "delete element"))
            .await;
        self.relist().await;
        result
    }

    /// Compares the table with what was made, and makes it again with every port's elements
    /// if it differs.
    async fn check(&mut self) -> Result<firewall::Found, String> {
        let found = match self.list().await {
            Ok(now) if now == self.listing => return Ok(firewall::Found::Intact),
            Ok(_) => firewall::Found::Changed,
            Err(_) => firewall::Found::Deleted,
        };
        let mut script = self.script.clone();
        for elements in self.elements.values() {
            script.push_str(elements);
        }
        self.apply(script).await?;
        self.relist().await;
        Ok(found)
    }

    /// Sends a RARP broadcast from `mac` out of VXLAN device `index`: every peer's device
    /// learns that `mac` is behind this host.
    fn announce(&self, index: u32, mac: Mac) -> std::io::Result<()> {
        let Some(fd) = &self.announcer else {
            return Ok(());
        };
        let frame = rarp_announcement(mac);
        // SAFETY: sockaddr_ll is plain data; sendto with our frame and a valid address of its
        // size on a packet socket we own.
        let sent = unsafe {
            let mut to: libc::sockaddr_ll = std::mem::zeroed();
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_ifindex = index as i32;
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&[0xFF; 6]);
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The frame a hypervisor sends for a VM that moved: a RARP request (reverse request, op 3)
/// broadcast from `mac` for `mac`, padded to 60 bytes. Nothing answers it; switches learn
/// where `mac` is from its source.
fn rarp_announcement(mac: Mac) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xFF; 6]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&[0x80, 0x35]);
    // Ethernet, IPv4, 6-byte and 4-byte addresses, reverse request.
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 3]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&[0; 4]);
    f.resize(60, 0);
    f
}

impl Networks {
    /// How network `name`, made on demand with `subnet`, spans: `None` without
    /// `--span-peers`. An error when it cannot: it would have another subnet than on the
    /// other hosts (its name's block is taken here), or the VNI of a network that is up.
    pub(super) fn span_plan(
        &self,
        name: &str,
        subnet: &Subnet,
    ) -> Result<Option<(u32, Vec<std::net::Ipv4Addr>)>, String> {
        let Some(peers) = self.span_cfg.as_ref().and_then(|s| s.on_demand()) else {
            return Ok(None);
        };
        if let Some(want) = self.pool.preferred(name).filter(|w| w != subnet) {
            return Err(format!(
                "it spans, and its block of --network-pool ({want}) is taken on this host: it would get {subnet} here and {want} on the other hosts"
            ));
        }
        let vni = crate::config::vni(name);
        if let Some(other) = self
            .up
            .values()
            .find(|u| u.overlay.as_ref().is_some_and(|o| o.vni == vni))
        {
            return Err(format!(
                "its VXLAN network identifier {vni} (from its name) is network {}'s: declare one of them with another vni",
                other.net.name
            ));
        }
        Ok(Some((vni, peers)))
    }

    /// Sets up spanning when the options ask for it (see [`SpanHost::start`]); returns the
    /// line that says so.
    pub(in crate::control) async fn start_span(
        &mut self,
        cfg: &Config,
        host: &mut Host,
    ) -> Result<Option<String>, String> {
        Ok(SpanHost::start(cfg, &self.handle, host)
            .await?
            .map(|(span, line)| {
                self.span = Some(span);
                line
            }))
    }

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
        let bridge_index = match netlink::overlay::add_bridge(h, bridge, mac, self.mtu).await {
            Ok(index) => index,
            Err(err) => return Err(unrecord(host, made, err)),
        };
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
        let vxlan_index = match netlink::overlay::add_vxlan(
            h,
            &vxlan,
            vni,
            (span.dev_index, span.local, VXLAN_PORT),
            self.mtu,
        )
        .await
        {
            Ok(index) => index,
            Err(err) => return Err(unrecord(host, made, err)),
        };
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
        // Last: nothing that can fail comes after, so no element outlives a network that was
        // not made.
        let gateway = subnet.gateway();
        let Some(span) = self.span.as_mut() else {
            return Err("spanning is not set up (no --span-dev)".into());
        };
        span.add_elements(&overlay.vxlan, mac, gateway)
            .await
            .map_err(|why| format!("cannot filter the gateway at {}: {why}", overlay.vxlan))?;
        Ok(overlay)
    }

    /// Deletes what [`Networks::make_overlay`] made that outlives the process (the links in
    /// `made`) and the network's filter elements; called once its TAP's queues are closed.
    /// Returns what `made` records that could not be undone (a link that would not go): it
    /// stays in the ledger, for `tapwire cleanup`.
    pub(super) async fn remove_overlay(&mut self, name: &str, made: &[Change]) -> Vec<Change> {
        let mut left = Vec::new();
        for change in made.iter().rev() {
            let Change::Link(link) = change else { continue };
            if let Some(span) = self.span.as_mut() {
                if let Err(e) = span.remove_elements(link).await {
                    log::warn!(
                        "network {name}: cannot take its elements out of the bridge filter: {e}"
                    );
                }
            }
            let Some(index) = netlink::link_index(&self.handle, link).await else {
                continue;
            };
            if let Err(e) = netlink::del_link(&self.handle, index, link).await {
                log::warn!("network {name}: {e} (it stays in the ledger for `tapwire cleanup`)");
                left.push(change.clone());
            }
        }
        left
    }

    /// Makes the bridge filter of spanning networks again if someone deleted or changed it
    /// (as the instance's own table is); whether it had to be.
    pub(in crate::control) async fn check_span_filter(&mut self) -> bool {
        let Some(span) = self.span.as_mut() else {
            return false;
        };
        match span.check().await {
            Ok(firewall::Found::Intact) => false,
            Ok(found) => {
                log::warn!(
                    "the nftables table bridge {} was {} by someone else: made again (it keeps each host's gateway and DHCP off the overlay)",
                    span.table,
                    if found == firewall::Found::Deleted { "deleted" } else { "changed" }
                );
                true
            }
            Err(e) => {
                log::error!(
                    "the nftables table bridge {} was deleted or changed by someone else and cannot be made again ({e}): the gateways of other hosts may answer this host's guests; restart tapwire",
                    span.table
                );
                false
            }
        }
    }

    /// Pins every guest of each spanning network to its TAP's port and announces it to the
    /// peers, and unpins those that left (called on the idle check, once a second).
    pub(in crate::control) async fn pin_guests(&mut self) {
        let handle = self.handle.clone();
        let span = self.span.as_ref();
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
                        if let Some(Err(e)) = span.map(|s| s.announce(o.vxlan_index, mac)) {
                            log::debug!(
                                "network {}: cannot announce {mac} on {}: {e}",
                                up.net.name,
                                o.vxlan
                            );
                        }
                    }
                    Err(e) => failed = Some(e.to_string()),
                }
            }
            for mac in o.pinned.difference(&owned).copied().collect::<Vec<_>>() {
                match netlink::overlay::unpin(&handle, o.port_index, mac, &o.port).await {
                    Ok(()) => {
                        o.pinned.remove(&mac);
                    }
                    Err(e) => failed = Some(e.to_string()),
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
    fn an_announcement_is_a_rarp_broadcast_from_and_for_the_guest() {
        let mac = Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let f = rarp_announcement(mac);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[..6], &[0xFF; 6]);
        assert_eq!(&f[6..12], &mac.0);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[20..22], &[0, 3], "reverse request");
        assert_eq!((&f[22..28], &f[32..38]), (&mac.0[..], &mac.0[..]));
    }

    #[test]
    fn a_spanning_network_s_links_are_named_by_its_slot() {
        assert_eq!(port_name("tapwire0", 12), "tapwire0t12");
        assert_eq!(vxlan_name("tapwire0", 12), "tapwire0x12");
    }
}
