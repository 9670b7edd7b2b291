//! The uplink: one non-persistent multi-queue TAP made through the `/dev/net/tun` ioctl
//! (`IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE`), one queue per core. Because it is not
//! persistent, the kernel deletes the interface when the last queue closes, even after a
//! SIGKILL. Also makes single-queue TAPs inside a namespace for test guests.

use std::io;
use std::os::fd::OwnedFd;

use rustix::io::Errno;

/// `TUNSETIFF` = `_IOW('T', 202, int)` (it takes a `struct ifreq`, read and written back).
const TUNSETIFF: rustix::ioctl::Opcode = rustix::ioctl::opcode::write::<libc::c_int>(b'T', 202);

/// Errors making the TAP; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Not a name the kernel takes.
    #[error("{0} — choose another --tap name")]
    BadName(#[from] crate::ifname::BadIfName),
    /// `/dev/net/tun` is missing.
    #[error("cannot open /dev/net/tun: {0} — load the tun module (modprobe tun) or, in a container, pass --device /dev/net/tun")]
    NoTunDevice(io::Error),
    /// Not allowed to open it.
    #[error("cannot open /dev/net/tun: {0} — run as root or grant CAP_NET_ADMIN")]
    TunPermission(io::Error),
    /// An interface of that name already exists in this network namespace.
    #[error("TAP {name:?} already exists in this network namespace{} — tapwire makes its own TAP and never shares one: stop that process, or choose another --tap", holders_text(.holders))]
    Exists {
        name: String,
        holders: Vec<(u32, String)>,
    },
    /// The ioctl failed.
    #[error("cannot create TAP {name:?} (queue {queue}): {err}{hint}")]
    SetIff {
        name: String,
        queue: usize,
        err: io::Error,
        hint: &'static str,
    },
}

/// `struct ifreq` as far as TUNSETIFF reads it: name, flags, padding to 40 bytes.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_int) -> Result<Self, TapError> {
        let name: crate::ifname::IfName = name.parse()?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // The flag bits used here all fit in 16 bits (IFF_MULTI_QUEUE is 0x0100).
        req.flags = flags as libc::c_short;
        Ok(req)
    }
}

fn open_tun() -> Result<OwnedFd, TapError> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(
        "/dev/net/tun",
        OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ACCESS | Errno::PERM => TapError::TunPermission(e.into()),
        _ => TapError::NoTunDevice(e.into()),
    })
}

fn set_iff(fd: &OwnedFd, name: &str, flags: libc::c_int, queue: usize) -> Result<(), TapError> {
    let mut req = IfReq::new(name, flags)?;
    // SAFETY: `fd` is an open /dev/net/tun descriptor and `req` is a properly sized, initialised
    // ifreq that outlives the call; TUNSETIFF reads the name and flags and writes the name back.
    let set = unsafe {
        rustix::ioctl::ioctl(
            fd,
            rustix::ioctl::Updater::<TUNSETIFF, IfReq>::new(&mut req),
        )
    };
    set.map_err(|e| {
        let hint = match e {
            Errno::PERM => " — run as root or grant CAP_NET_ADMIN",
            Errno::BUSY => " — an interface of that name exists and is not a multi-queue TAP we can attach to; pick another --tap name or delete it",
            Errno::INVAL => " — an interface of that name exists with other flags; pick another --tap name",
            _ => "",
        };
        TapError::SetIff {
            name: name.to_string(),
            queue,
            err: e.into(),
            hint,
        }
    })
}

/// Creates the multi-queue TAP `name` with `queues` queues, non-blocking. The first queue
/// is opened with `IFF_TUN_EXCL`, so an interface that already exists (another relay's TAP
/// included: `TUNSETIFF` would otherwise attach to it) is refused, atomically.
pub fn open_multiqueue(name: &str, queues: usize) -> Result<Vec<OwnedFd>, TapError> {
    open_multiqueue_with(name, queues, false)
}

/// [`open_multiqueue`]; with `offload`, also `IFF_VNET_HDR` (every frame read or written
/// carries a `virtio_net_hdr`: see [`crate::offload`]) and the offloads [`OFFLOADS`].
pub fn open_multiqueue_with(
    name: &str,
    queues: usize,
    offload: bool,
) -> Result<Vec<OwnedFd>, TapError> {
    let vnet = if offload { libc::IFF_VNET_HDR } else { 0 };
    let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE | vnet;
    let fds = (0..queues)
        .map(|queue| {
            let fd = open_tun()?;
            let excl = if queue == 0 { libc::IFF_TUN_EXCL } else { 0 };
            match set_iff(&fd, name, flags | excl, queue) {
                Err(TapError::SetIff { err, .. })
                    if queue == 0 && err.raw_os_error() == Some(Errno::BUSY.raw_os_error()) =>
                {
                    Err(TapError::Exists {
                        name: name.to_string(),
                        holders: holders(name),
                    })
                }
                other => other.map(|()| fd),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let (true, Some(first)) = (offload, fds.first()) {
        set_offload(first, name)?;
    }
    Ok(fds)
}

/// What `--offload` asks of the kernel: it may leave checksums partial and hand over TCP
/// super-frames over IPv4 and IPv6, ECN included; the relay completes and cuts them.
pub const OFFLOADS: libc::c_uint =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

/// `TUNSETOFFLOAD` with [`OFFLOADS`] (for the whole device, whichever queue asks).
fn set_offload(fd: &OwnedFd, name: &str) -> Result<(), TapError> {
    use std::os::fd::AsRawFd;
    // SAFETY: TUNSETOFFLOAD takes its argument by value; `fd` is an open TAP queue.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(OFFLOADS),
        )
    };
    if r < 0 {
        return Err(TapError::SetIff {
            name: name.to_string(),
            queue: 0,
            err: io::Error::last_os_error(),
            hint: " — the kernel refused the TAP offloads (TUNSETOFFLOAD); run without --offload",
        });
    }
    Ok(())
}

/// Processes of this network namespace that hold a queue of TAP `name`, with their command
/// names (from `iff:` in the fdinfo of their /dev/net/tun descriptors).
pub fn holders(name: &str) -> Vec<(u32, String)> {
    use crate::processes;
    let here = processes::netns_inode(std::process::id());
    processes::pids()
        .filter(|p| processes::netns_inode(*p) == here && processes::holds_tap(*p, name))
        .map(|p| (p, processes::comm(p).unwrap_or_default()))
        .collect()
}

fn holders_text(holders: &[(u32, String)]) -> String {
    let list: Vec<String> = holders
        .iter()
        .map(|(p, c)| format!("pid {p} ({c})"))
        .collect();
    if list.is_empty() {
        String::new()
    } else {
        format!(", held by {}", list.join(", "))
    }
}

/// Creates a plain single-queue TAP (used by test guests inside their namespace).
pub fn open_single(name: &str, nonblocking: bool) -> Result<OwnedFd, TapError> {
    let fd = open_tun()?;
    set_iff(&fd, name, libc::IFF_TAP | libc::IFF_NO_PI, 0)?;
    if !nonblocking {
        rustix::fs::fcntl_setfl(&fd, rustix::fs::OFlags::empty()).map_err(|e| {
            TapError::SetIff {
                name: name.to_string(),
                queue: 0,
                err: e.into(),
                hint: " — cannot make its descriptor blocking",
            }
        })?;
    }
    Ok(fd)
}

/// The MAC address of the TAP behind `fd` (`SIOCGIFHWADDR`, answered by the tun driver).
pub fn mac_of(fd: &OwnedFd) -> io::Result<crate::switch::Mac> {
    #[repr(C)]
    struct IfReqHw {
        name: [libc::c_char; libc::IFNAMSIZ],
        addr: libc::sockaddr,
        _pad: [u8; 8],
    }
    // SAFETY: all-zero is a valid value of this plain C struct.
    let mut req: IfReqHw = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an attached tun descriptor; SIOCGIFHWADDR writes a sockaddr into the
    // properly sized ifreq we own.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            rustix::ioctl::Updater::<{ libc::SIOCGIFHWADDR as rustix::ioctl::Opcode }, IfReqHw>::new(
                &mut req,
            ),
        )
    }?;
    let d = req.addr.sa_data;
    Ok(crate::switch::Mac([
        d[0] as u8, d[1] as u8, d[2] as u8, d[3] as u8, d[4] as u8, d[5] as u8,
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_limits() {
        assert!(IfReq::new("abcdefghijklmno", 0).is_ok());
        assert!(matches!(
            IfReq::new("abcdefghijklmnop", 0),
            Err(TapError::BadName(_))
        ));
        assert!(matches!(IfReq::new("", 0), Err(TapError::BadName(_))));
        assert!(matches!(IfReq::new("a/b", 0), Err(TapError::BadName(_))));
    }

    #[test]
    fn ifreq_layout_matches_kernel() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
