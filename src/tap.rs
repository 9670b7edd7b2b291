//! The uplink: one non-persistent multi-queue TAP made through the `/dev/net/tun` ioctl
//! (`IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE`), one queue per core. Because it is not
//! persistent, the kernel deletes the interface when the last queue closes, even after a
//! SIGKILL. Also makes single-queue TAPs inside a namespace for test guests.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// `TUNSETIFF` = `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

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
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => TapError::TunPermission(e),
            _ => TapError::NoTunDevice(e),
        })?;
    Ok(OwnedFd::from(file))
}

fn set_iff(fd: &OwnedFd, name: &str, flags: libc::c_int, queue: usize) -> Result<(), TapError> {
    let mut req = IfReq::new(name, flags)?;
    // SAFETY: `fd` is an open /dev/net/tun descriptor and `req` is a properly sized, initialised
    // ifreq that outlives the call; TUNSETIFF reads the name and flags and writes the name back.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        let hint = match err.raw_os_error() {
            Some(libc::EPERM) => " — run as root or grant CAP_NET_ADMIN",
            Some(libc::EBUSY) => " — an interface of that name exists and is not a multi-queue TAP we can attach to; pick another --tap name or delete it",
            Some(libc::EINVAL) => " — an interface of that name exists with other flags; pick another --tap name",
            _ => "",
        };
        return Err(TapError::SetIff {
            name: name.to_string(),
            queue,
            err,
            hint,
        });
    }
    Ok(())
}

/// Creates the multi-queue TAP `name` with `queues` queues, non-blocking. The first queue
/// is opened with `IFF_TUN_EXCL`, so an interface that already exists (another relay's TAP
/// included: `TUNSETIFF` would otherwise attach to it) is refused, atomically.
pub fn open_multiqueue(name: &str, queues: usize) -> Result<Vec<OwnedFd>, TapError> {
    let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE;
    (0..queues)
        .map(|queue| {
            let fd = open_tun()?;
            let excl = if queue == 0 { libc::IFF_TUN_EXCL } else { 0 };
            match set_iff(&fd, name, flags | excl, queue) {
                Err(TapError::SetIff { err, .. })
                    if queue == 0 && err.raw_os_error() == Some(libc::EBUSY) =>
                {
                    Err(TapError::Exists {
                        name: name.to_string(),
                        holders: holders(name),
                    })
                }
                other => other.map(|()| fd),
            }
        })
        .collect()
}

/// Processes of this network namespace that hold a queue of TAP `name`, with their command
/// names (from `iff:` in the fdinfo of their /dev/net/tun descriptors).
pub fn holders(name: &str) -> Vec<(u32, String)> {
    use crate::control::instance::{netns_inode_of, pids};
    let here = netns_inode_of(std::process::id());
    let iff = format!("iff:\t{name}\n");
    let mut found = Vec::new();
    for pid in pids().filter(|p| netns_inode_of(*p) == here) {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"));
        let holds = fds.into_iter().flatten().flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|t| t == std::path::Path::new("/dev/net/tun"))
                && std::fs::read_to_string(format!(
                    "/proc/{pid}/fdinfo/{}",
                    fd.file_name().to_string_lossy()
                ))
                .is_ok_and(|info| info.contains(&iff))
        });
        if holds {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            found.push((pid, comm.trim().to_string()));
        }
    }
    found
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
        // SAFETY: plain fcntl on a descriptor we own; F_SETFL with O_RDWR clears O_NONBLOCK.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_RDWR) };
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
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::SIOCGIFHWADDR,
            &mut req as *mut IfReqHw,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let d = req.addr.sa_data;
    Ok(crate::switch::Mac([
        d[0] as u8, d[1] as u8, d[2] as u8, d[3] as u8, d[4] as u8, d[5] as u8,
    ]))
}

/// Interface index of `name`, or `None` if there is no such interface.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
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
