//! What tapwire reads about other processes in /proc: which exist, what they are called and
//! were started with, when they started, which network namespace they are in, and whether
//! they hold a queue of a TAP. One low module, so that neither the TAP code nor the control
//! plane reaches into the other for it. Every answer is "nothing" for a process that is gone
//! (a pid may vanish between two reads).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Every process id in /proc.
pub fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// Whether a process with this pid exists.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Its command name (`comm`), trimmed.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_string())
}

/// Its command line, one entry per argument.
pub fn cmdline(pid: u32) -> Vec<Vec<u8>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Its start time (field 22 of /proc/PID/stat, in clock ticks after boot): tells it from a
/// later process that reuses its pid.
pub fn start_time(pid: u32) -> Option<u64> {
    start_time_in(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Field 22 of a /proc/PID/stat line. The command name (field 2) is in parentheses and may
/// itself hold spaces and parentheses, so fields are counted after the last `)`.
fn start_time_in(stat: &str) -> Option<u64> {
    let after = stat.get(stat.rfind(')')? + 1..)?;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The inode of its network namespace.
pub fn netns_inode(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// Whether it holds a queue of TAP `name`: a descriptor of /dev/net/tun whose fdinfo names
/// the interface (`iff:`).
pub fn holds_tap(pid: u32, name: &str) -> bool {
    let iff = format!("iff:\t{name}\n");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"));
    fds.into_iter().flatten().flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|t| t == Path::new("/dev/net/tun"))
            && std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .is_ok_and(|info| info.contains(&iff))
    })
}

/// Sends `signal` to `pid`; whether it was delivered.
pub fn signal(pid: u32, signal: rustix::process::Signal) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    rustix::process::kill_process(pid, signal).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_seen_and_a_missing_one_is_not() {
        let me = std::process::id();
        assert!(pids().any(|p| p == me));
        assert!(alive(me));
        assert!(comm(me).is_some_and(|c| !c.is_empty()));
        assert!(!cmdline(me).is_empty());
        assert!(start_time(me).is_some());
        assert!(netns_inode(me).is_some());
        assert!(!holds_tap(me, "tapwire-none"));
        // Above the kernel's pid limit (4 194 304): never a process.
        let gone = 4_194_305;
        assert!(!alive(gone));
        assert_eq!(
            (comm(gone), start_time(gone), netns_inode(gone)),
            (None, None, None)
        );
        assert!(cmdline(gone).is_empty());
        assert!(!signal(gone, rustix::process::Signal::TERM));
    }

    #[test]
    fn start_time_is_counted_after_the_command_name() {
        let fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        let stat = format!("77 (a ) b (c) {}", fields.join(" "));
        assert_eq!(start_time_in(&stat), Some(22));
        assert_eq!(start_time_in("77 (x) S 1"), None);
        assert_eq!(start_time_in("no parenthesis"), None);
    }
}
