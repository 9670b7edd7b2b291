//! Doorbells for changes someone else makes to what this instance made: one rings on any
//! nftables change in the namespace, one on any link change. A ring says only "something
//! changed"; the supervisor then looks at its own table and TAP and acts on what it finds, so
//! nothing here parses a netlink message, and a burst of changes (or a socket buffer that
//! overflowed, ENOBUFS) is one ring.

use std::io;
use std::os::fd::OwnedFd;

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// `NFNLGRP_NFTABLES`: nftables' own notifications (tables, chains, rules, sets).
const NFNLGRP_NFTABLES: u32 = 7;
/// `RTMGRP_LINK`: links made, changed and deleted.
const RTMGRP_LINK: u32 = 1;

/// A netlink socket subscribed to one multicast group.
pub struct Doorbell {
    fd: AsyncFd<OwnedFd>,
    /// Where messages are read into and forgotten.
    scratch: Vec<u8>,
}

impl Doorbell {
    /// Rings on every nftables change in this network namespace.
    pub fn nftables() -> io::Result<Self> {
        Self::open(Some(netlink::NETFILTER), 1 << (NFNLGRP_NFTABLES - 1))
    }

    /// Rings on every link change in this network namespace.
    pub fn links() -> io::Result<Self> {
        // NETLINK_ROUTE is protocol 0, the default.
        Self::open(None, RTMGRP_LINK)
    }

    fn open(protocol: Option<rustix::net::Protocol>, groups: u32) -> io::Result<Self> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            protocol,
        )?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, groups))?;
        // SAFETY: the descriptor is ours (an OwnedFd moved in) and stays open and the same
        // until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Doorbell {
            fd,
            scratch: vec![0; 64 * 1024],
        })
    }

    /// Waits until something changed, then takes every message already waiting.
    pub async fn rung(&mut self) {
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                // The reactor is gone (shutting down): never ring again.
                return std::future::pending().await;
            };
            let got = drain(self.fd.get_ref(), &mut self.scratch);
            ready.clear_ready();
            if got {
                return;
            }
        }
    }

    /// Takes every message waiting, without waiting; whether there was any.
    pub fn drain(&mut self) -> bool {
        drain(self.fd.get_ref(), &mut self.scratch)
    }
}

/// Reads and forgets every message waiting on `fd`; whether there was any (or the kernel
/// dropped some for want of room, which also means something changed).
fn drain(fd: &OwnedFd, scratch: &mut [u8]) -> bool {
    let mut got = false;
    loop {
        match rustix::net::recv(fd, &mut *scratch, RecvFlags::DONTWAIT) {
            Ok(_) => got = true,
            Err(rustix::io::Errno::NOBUFS) => got = true,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return got,
        }
    }
}
