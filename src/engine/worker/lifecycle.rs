//! Connections coming and going: accept, admission against `--max-clients`, shutdown of a
//! socket, and freeing a slot once the kernel is done with it.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use io_uring::{opcode, types};

use crate::counters::DropReason;
use crate::switch::PortId;
use crate::ws::handshake;

use super::super::client::Client;
use super::super::conn::Conn;
use super::super::mailbox::Control;
use super::super::ops::{self, Kind};
use super::super::tls_session::TlsSession;
use super::Worker;

impl Worker {
    /// An accept completed on acceptor `index` (0: ws://, 1: wss://).
    pub(super) fn on_accept(&mut self, index: usize, res: i32, flags: u32) {
        let draining = self.draining();
        let Some(acceptor) = self.acceptors.get_mut(index) else {
            return;
        };
        let (fd, rearm) = acceptor.on_completion(res, flags, self.id, &self.shared.log_gate);
        if rearm && !draining {
            acceptor.arm(&mut self.ring);
        }
        if let Some(fd) = fd {
            self.counters.connections_accepted.inc();
            self.admit(fd, index == 1);
        }
    }

    /// Takes a new connection as a client, or refuses it with `503` beyond `--max-clients`.
    /// Accepted sockets inherit `TCP_NODELAY` from the listener.
    fn admit(&mut self, fd: OwnedFd, tls: bool) {
        if self.draining() {
            return;
        }
        let total = self.shared.clients.fetch_add(1, Ordering::AcqRel);
        if total >= self.cfg.clients.max_clients {
            self.shared.clients.fetch_sub(1, Ordering::AcqRel);
            self.counters.dropped(DropReason::TooManyClients);
            let response = handshake::too_many_clients_response();
            // One non-blocking send on a fresh socket; if it does not fit, the peer gets a reset.
            let _ = rustix::net::send(
                &fd,
                response.as_bytes(),
                rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
            );
            return;
        }
        // One atomic per connection, not per frame.
        self.shared
            .peak_clients
            .fetch_max(total + 1, Ordering::Relaxed);
        let deadline = self
            .time
            .now_ms
            .saturating_add(super::ms(self.cfg.clients.handshake_timeout));
        let conn = Conn::new(self.policy.conn, self.time.now_ms, deadline);
        let session = match (&self.cfg.tls, tls) {
            (Some(certs), true) => match TlsSession::new(certs.current()) {
                Ok(s) => Some(Box::new(s)),
                Err(e) => {
                    self.shared.clients.fetch_sub(1, Ordering::AcqRel);
                    self.counters.dropped(DropReason::TlsHandshakeFailed);
                    log::warn!("core {}: cannot start TLS: {e}", self.id);
                    return;
                }
            },
            _ => None,
        };
        let now = self.time.now_ms;
        let port = self.clients.insert(|port| {
            let mut c = Client::new(fd, port, conn, session);
            c.since_ms = now;
            c
        });
        self.counters.clients_open.inc();
        self.arm_recv(port);
    }

    /// Stops a client: no more input or output, its MACs released, its socket shut down. The
    /// slot is freed once its operations have completed ([`Worker::maybe_free`]).
    pub(super) fn begin_close(&mut self, port: PortId) {
        let Some(c) = self.clients.get_mut(port) else {
            return;
        };
        if c.conn.is_closed() {
            return;
        }
        c.conn.close();
        // Wakes any receive or send still in flight; an error means the peer is gone already.
        let _ = rustix::net::shutdown(c.socket.fd(), rustix::net::Shutdown::Both);
        let fd = types::Fd(c.socket.raw_fd());
        if let Some(net) = self.clients.set_closed(port) {
            self.leave_network(port, net);
        }
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::fd(fd).all())
            .build()
            .user_data(ops::for_index(Kind::Cancel, 0));
        // SAFETY: a cancel names operations by descriptor; the descriptor stays open until
        // the slot is freed, after every operation on it has completed.
        unsafe { self.ring.push(&cancel) };
    }

    /// The client of `port` leaves network slot `net`: its MACs are released there.
    fn leave_network(&mut self, port: PortId, net: u16) {
        self.left(net);
        let Some(local) = self.net_local(net) else {
            return;
        };
        let id = local.net.id;
        let macs = local.net.authority.with(|own| own.release_port(port));
        for &mac in &macs {
            local.switch.forget(mac, port);
            if let Some(s) = &local.net.steering {
                s.remove(mac);
            }
        }
        for mac in macs {
            self.mailbox.broadcast(Control::Forget(id, mac, port));
        }
    }

    /// Frees a closed client whose operations have all completed.
    pub(super) fn maybe_free(&mut self, port: PortId) {
        if !self.clients.get_mut(port).is_some_and(|c| c.finished()) {
            return;
        }
        let Some(mut c) = self.clients.remove(port) else {
            return;
        };
        let pool = &mut self.pool;
        c.out.clear(|id| pool.release(id));
        if let Some((id, _)) = self.partial.take(&mut c.assembly) {
            self.pool.release(id);
        }
        if let Some(parked) = c.parked.take() {
            for (buf, _, _) in parked.input {
                self.pool.release(buf);
            }
        }
        drop(c);
        self.shared.clients.fetch_sub(1, Ordering::AcqRel);
        self.counters.connections_closed.inc();
        self.counters.clients_open.dec();
    }
}
