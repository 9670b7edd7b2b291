//! Listening sockets: one `SO_REUSEPORT` listener per core, all on the same address.
//!
//! The kernel picks a listener per connection; by default by a hash of the 4-tuple. We attach
//! a classic BPF program that picks by [`steer`] of the client's source port instead: as even
//! as the hash, but predictable, so tests can place a client on a chosen core.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog per core.
const BACKLOG: i32 = 4096;

/// Which core a connection from source port `port` lands on (mirrors the BPF program).
pub fn steer(port: u16, cores: usize) -> usize {
    let p = u32::from(port);
    ((p ^ (p >> 3) ^ (p >> 7)) % cores as u32) as usize
}

/// Binds `cores` listeners on `addr` (port 0: one free port for all of them).
///
/// `SO_REUSEPORT` would let these listeners join the group of another process's listeners on
/// the same address (another tapwire of the same user): connections would be split between the
/// two relays and this one's steering program would replace the other's. So the address is
/// first probed with a socket without `SO_REUSEPORT`, which any listener already there refuses.
pub fn bind_listeners(addr: SocketAddr, cores: usize) -> io::Result<Vec<TcpListener>> {
    bind_for("--listen", addr, cores)
}

/// [`bind_listeners`] for the wss:// listener (`--listen-tls`).
pub fn bind_tls_listeners(addr: SocketAddr, cores: usize) -> io::Result<Vec<TcpListener>> {
    bind_for("--listen-tls", addr, cores)
}

/// The listeners of `option`, named in errors.
fn bind_for(option: &str, addr: SocketAddr, cores: usize) -> io::Result<Vec<TcpListener>> {
    if addr.port() != 0 {
        let probe = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.cloexec(),
            Some(Protocol::TCP),
        )?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {addr}: {e} — something in this network namespace already listens there (another tapwire?); stop it or choose another {option}"),
            )
        })?;
    }
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(cores);
    for _ in 0..cores {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.cloexec(),
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        // Accepted sockets inherit it: a frame goes out when it is queued, not after the peer
        // acknowledged the previous one (Nagle), which would add up to a round trip of delay
        // to every frame sent to a client that is also receiving a stream.
        socket.set_tcp_nodelay(true)?;
        socket.bind(&addr.into()).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {addr}: {e} — is another tapwire or program using it? choose another {option}"))
        })?;
        socket.listen(BACKLOG)?;
        let listener: TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    if cores > 1 {
        if let Err(e) = attach_steering(&listeners[0], addr.is_ipv6(), cores) {
            log::warn!("cannot attach the connection-steering BPF program ({e}); the kernel's hash spreads connections instead");
        }
    }
    Ok(listeners)
}

fn attach_steering(listener: &TcpListener, ipv6: bool, cores: usize) -> io::Result<()> {
    const SKF_NET_OFF: i32 = -0x100000;
    let ip_header = if ipv6 { 40 } else { 20 };
    let op = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    // Classic BPF opcodes (linux/filter.h).
    let (ld_h_abs, tax, txa, rsh_k, xor_x, st, ld_mem, mod_k, ret_a) =
        (0x28, 0x07, 0x87, 0x74, 0xac, 0x02, 0x60, 0x94, 0x16);
    let program = [
        op(ld_h_abs, (SKF_NET_OFF + ip_header) as u32), // A = TCP source port
        op(tax, 0),                                     // X = port
        op(rsh_k, 3),                                   // A = port >> 3
        op(xor_x, 0),                                   // A = port ^ port >> 3
        op(st, 0),                                      // M[0] = A
        op(txa, 0),                                     // A = port
        op(rsh_k, 7),                                   // A = port >> 7
        op(tax, 0),                                     // X = port >> 7
        op(ld_mem, 0),                                  // A = M[0]
        op(xor_x, 0),                                   // A ^= port >> 7
        op(mod_k, cores as u32),                        // A %= cores
        op(ret_a, 0),                                   // listener index
    ];
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: setsockopt with a valid socket and a sock_fprog pointing at `program`, which
    // outlives the call (the kernel copies it).
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steering_spreads_even_ports() {
        let mut per_core = [0usize; 2];
        for port in (32768u16..33768).step_by(2) {
            per_core[steer(port, 2)] += 1;
        }
        assert!(per_core.iter().all(|n| *n > 200), "{per_core:?}");
    }

    #[test]
    fn an_address_another_relay_listens_on_is_refused() {
        let first = bind_listeners("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = first[0].local_addr().unwrap();
        let err = bind_listeners(addr, 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("already listens there"), "{err}");
        drop(first);
        assert_eq!(bind_listeners(addr, 2).unwrap().len(), 2, "free again");
    }

    #[test]
    fn accepted_connections_send_without_nagle_delay() {
        let listeners = bind_listeners("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = listeners[0].accept().unwrap();
        assert!(socket2::SockRef::from(&accepted).tcp_nodelay().unwrap());
    }

    #[test]
    fn connections_land_where_steer_says() {
        let listeners = bind_listeners("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        for l in &listeners {
            l.set_nonblocking(true).unwrap();
        }
        for source_port in [41000u16, 41001, 41002, 41003] {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.set_reuse_address(true).unwrap();
            s.bind(&SocketAddr::from(([127, 0, 0, 1], source_port)).into())
                .unwrap();
            s.connect(&addr.into()).unwrap();
            let want = steer(source_port, 2);
            std::thread::sleep(std::time::Duration::from_millis(20));
            let got: Vec<bool> = listeners.iter().map(|l| l.accept().is_ok()).collect();
            assert!(
                got[want] && !got[1 - want],
                "port {source_port}: expected core {want}, accepted {got:?}"
            );
        }
    }
}
