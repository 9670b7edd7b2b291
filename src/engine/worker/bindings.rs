//! Anti-spoofing on a core: each client frame is checked against the IPv4 bindings
//! ([`crate::switch::guard`]), and DHCP replies read from the TAP make and end bindings.
//!
//! A binding lives in the network's ownership authority, keyed by MAC, and outlives the
//! client (a
//! guest that reconnects keeps its lease); the owning core's switch replica holds a copy in
//! the MAC's entry, so a frame's check costs no lookup beyond the one switching already does.
//! Bindings change only on DHCP ACK/NAK/release, so the authority's lock is taken then and
//! when a core learns a MAC, never per frame.

use crate::counters::DropReason;
use crate::switch::guard::{self, Claim, Snoop};
use crate::switch::{Binding, Mac, PortId};

use super::super::mailbox::Control;
use super::Worker;

impl Worker {
    /// What a client frame from `src` claims; `None` (dropped, counted, logged once per
    /// client) when the guard refuses it outright. Everything passes with `--allow-spoofing`.
    pub(super) fn guard(&mut self, port: PortId, bytes: &[u8], src: Mac) -> Option<Claim> {
        if !self.cfg.anti_spoofing {
            return Some(Claim::NOTHING);
        }
        match guard::inspect(bytes, src) {
            Ok(claim) => Some(claim),
            Err(drop) => {
                let reason = DropReason::from(drop);
                self.drop_logged(port, reason, format_args!("source {src}"));
                None
            }
        }
    }

    /// After a client frame of network slot `net` passed: a DHCP release or decline ends its
    /// MAC's binding.
    pub(super) fn after_guard(&mut self, net: u16, claim: Claim, src: Mac) {
        if claim.gives_up_lease {
            self.counters.dhcp_unbindings.inc();
            self.rebind(net, src, None);
        }
    }

    /// A DHCP ACK or NAK read from the TAP of network slot `net` ([`guard::snoop`]): binds or
    /// unbinds its client.
    pub(super) fn snooped(&mut self, net: u16, dhcp: Snoop) {
        match dhcp {
            Snoop::Ack {
                mac,
                ip,
                lease_secs,
            } => {
                self.counters.dhcp_bindings.inc();
                let binding = Binding::lease(ip, lease_secs, self.time.now_ms);
                self.rebind(net, mac, Some(binding));
            }
            Snoop::Nak { mac } => {
                self.counters.dhcp_unbindings.inc();
                self.rebind(net, mac, None);
            }
        }
    }

    /// Records `mac`'s new binding in the authority of network slot `net`, then in every
    /// replica: a core learning `mac` meanwhile reads the authority under its lock, so none
    /// misses the change.
    fn rebind(&mut self, net: u16, mac: Mac, binding: Option<Binding>) {
        let now = self.time.now_ms;
        let Some(local) = self.net_local(net) else {
            return;
        };
        let binding = local.net.authority.with(|own| {
            match binding {
                Some(b) => own.bind(mac, b, now),
                None => own.unbind(mac),
            }
            // A reservation outlives what DHCP says.
            own.binding(mac, now)
        });
        local.switch.set_binding(mac, binding);
        let id = local.net.id;
        self.mailbox.broadcast(Control::Bind(id, mac, binding));
    }
}
