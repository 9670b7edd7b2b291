//! TAP queue steering by destination MAC: an eBPF program attached with `TUNSETSTEERINGEBPF`
//! that makes the kernel put a frame for a guest on the TAP queue of the core that holds the
//! guest's connection, instead of the queue a flow hash picks. Without it about half the
//! host → guest frames of a multi-core relay land on the wrong core and take the cross-core
//! path (one more copy and a hand-off).
//!
//! The program looks the destination MAC up in a hash map (MAC → queue) that the cores fill
//! as they learn addresses; unknown and group addresses go to queue 0, whose core floods them
//! everywhere as before. The map is only a hint: a stale or missing entry costs a cross-core
//! hand-off, never a frame. Every failure here leaves the flow hash in charge.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::switch::Mac;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// `_IOR('T', 224, int)`.
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    // `dst_reg:4, src_reg:4` bit fields: the first field takes the low nibble on little-endian
    // targets and the high nibble on big-endian ones.
    let regs = if cfg!(target_endian = "big") {
        (dst << 4) | src
    } else {
        dst | (src << 4)
    };
    Insn {
        code,
        regs,
        off,
        imm,
    }
}

/// The steering program for map `map_fd`:
///
/// ```text
/// r6 = r1                       ; context, required by the packet loads
/// r0 = be32 packet[0..4]        ; destination MAC, first four bytes
/// r7 = r0 << 16
/// r0 = be16 packet[4..6]
/// r7 |= r0                      ; the MAC as a 48-bit number
/// *(u64 *)(r10 - 8) = r7
/// r1 = map; r2 = r10 - 8
/// r0 = map_lookup_elem(r1, r2)
/// if r0 == 0 goto fallback
/// r0 = *(u32 *)r0; exit
/// fallback: r0 = 0; exit
/// ```
///
/// A frame shorter than six bytes ends the program with 0 (packet loads do that).
fn program(map_fd: i32) -> Vec<Insn> {
    vec![
        insn(0xbf, 6, 1, 0, 0),                      // mov64 r6, r1
        insn(0x20, 0, 0, 0, 0),                      // ld_abs w [0]
        insn(0xbf, 7, 0, 0, 0),                      // mov64 r7, r0
        insn(0x67, 7, 0, 0, 16),                     // lsh64 r7, 16
        insn(0x28, 0, 0, 0, 4),                      // ld_abs h [4]
        insn(0x4f, 7, 0, 0, 0),                      // or64 r7, r0
        insn(0x7b, 10, 7, -8, 0),                    // stx dw [r10-8], r7
        insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map_fd), // ld_imm64 r1, map
        insn(0x00, 0, 0, 0, 0),
        insn(0xbf, 2, 10, 0, 0), // mov64 r2, r10
        insn(0x07, 2, 0, 0, -8), // add64 r2, -8
        insn(0x85, 0, 0, 0, 1),  // call map_lookup_elem
        insn(0x15, 0, 0, 2, 0),  // jeq r0, 0, +2
        insn(0x61, 0, 0, 0, 0),  // ldx w r0, [r0]
        insn(0x95, 0, 0, 0, 0),  // exit
        insn(0xb7, 0, 0, 0, 0),  // mov64 r0, 0
        insn(0x95, 0, 0, 0, 0),  // exit
    ]
}

/// The map key of `mac`: the address as a 48-bit number, as the program builds it.
fn key(mac: Mac) -> u64 {
    let m = mac.0;
    u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]])
}

/// `bpf(cmd, attr)`, with `attr` zero-padded to the size the kernel expects at most.
fn bpf(cmd: libc::c_long, attr: &[u64]) -> io::Result<i32> {
    let mut buf = [0u64; 16];
    buf[..attr.len()].copy_from_slice(attr);
    // SAFETY: the kernel reads at most size_of_val(&buf) bytes of a buffer we own; pointers
    // inside it point at memory that lives until the call returns.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            buf.as_ptr(),
            std::mem::size_of_val(&buf) as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        // Lossless: descriptors and 0 fit in i32.
        Ok(r as i32)
    }
}

/// Two consecutive u32 fields of `union bpf_attr` as one u64 word whose bytes in memory are
/// `first` then `second`, on targets of either byte order.
fn pair(first: u32, second: u32) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&first.to_ne_bytes());
    bytes[4..].copy_from_slice(&second.to_ne_bytes());
    u64::from_ne_bytes(bytes)
}

/// The steering map of a TAP. The program is detached again on drop: a persistent TAP that
/// tapwire only attached to must not keep a program nobody feeds.
pub struct Steering {
    map: OwnedFd,
    /// A queue descriptor of the TAP, for detaching.
    tap: OwnedFd,
}

impl Drop for Steering {
    fn drop(&mut self) {
        let none: libc::c_int = -1;
        // SAFETY: TUNSETSTEERINGEBPF reads one int; -1 detaches the program.
        unsafe { libc::ioctl(self.tap.as_raw_fd(), TUNSETSTEERINGEBPF, &none) };
    }
}

impl Steering {
    /// [`Steering::attach`] when the TAP has queues of `cores` cores to steer between;
    /// `Ok(None)` with one core.
    pub fn attach_for(cores: usize, tap: &OwnedFd, entries: u32) -> io::Result<Option<Steering>> {
        if cores < 2 {
            return Ok(None);
        }
        Steering::attach(tap, entries).map(Some)
    }

    /// Creates the map (room for `entries` addresses), loads the program and attaches it to
    /// the TAP queue `tap` belongs to.
    pub fn attach(tap: &OwnedFd, entries: u32) -> io::Result<Steering> {
        // union bpf_attr, map create: map_type, key_size, value_size, max_entries, map_flags.
        let map = bpf(
            BPF_MAP_CREATE,
            &[
                pair(BPF_MAP_TYPE_HASH, 8),
                pair(4, entries.max(16)),
                pair(0, 0),
            ],
        )
        .map_err(|e| io::Error::new(e.kind(), format!("bpf map create: {e}")))?;
        // SAFETY: a fresh descriptor the kernel just gave us.
        let map = unsafe { OwnedFd::from_raw_fd(map) };
        let insns = program(map.as_raw_fd());
        let license = c"GPL";
        let mut log = vec![0u8; 4096];
        // prog load: prog_type, insn_cnt, insns, license, log_level, log_size, log_buf.
        let prog = bpf(
            BPF_PROG_LOAD,
            &[
                // Lossless: 17 instructions.
                pair(BPF_PROG_TYPE_SOCKET_FILTER, insns.len() as u32),
                insns.as_ptr() as u64,
                license.as_ptr() as u64,
                // Lossless: 4096.
                pair(1, log.len() as u32),
                log.as_mut_ptr() as u64,
            ],
        )
        .map_err(|e| {
            let text = String::from_utf8_lossy(&log);
            io::Error::new(
                e.kind(),
                format!(
                    "bpf program load: {e} ({})",
                    text.trim_matches(char::from(0)).trim()
                ),
            )
        })?;
        // SAFETY: a fresh descriptor the kernel just gave us.
        let prog = unsafe { OwnedFd::from_raw_fd(prog) };
        let tap = tap.try_clone()?;
        let fd: libc::c_int = prog.as_raw_fd();
        // SAFETY: TUNSETSTEERINGEBPF reads one int (the program descriptor) from the pointer.
        // The TAP keeps its own reference to the program; ours may close afterwards.
        if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETSTEERINGEBPF, &fd) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("TUNSETSTEERINGEBPF: {e}")));
        }
        Ok(Steering { map, tap })
    }

    /// Frames for `mac` go to TAP queue `queue` from now on.
    pub fn set(&self, mac: Mac, queue: u32) -> io::Result<()> {
        let k = key(mac);
        let v = queue;
        // update: map_fd, key, value, flags (BPF_ANY).
        bpf(
            BPF_MAP_UPDATE_ELEM,
            &[
                // Lossless: descriptors are non-negative.
                pair(self.map.as_raw_fd() as u32, 0),
                (&k as *const u64) as u64,
                (&v as *const u32) as u64,
                0,
            ],
        )
        .map(|_| ())
    }

    /// Forgets `mac` (its frames go back to the default queue).
    pub fn remove(&self, mac: Mac) {
        let k = key(mac);
        // A missing entry (ENOENT) is fine: it is already gone.
        let _ = bpf(
            BPF_MAP_DELETE_ELEM,
            &[
                // Lossless: descriptors are non-negative.
                pair(self.map.as_raw_fd() as u32, 0),
                (&k as *const u64) as u64,
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_the_mac_as_a_number() {
        assert_eq!(
            key(Mac([0x02, 0x53, 0xaa, 0xbb, 0xcc, 0xdd])),
            0x0253_aabb_ccdd
        );
    }

    #[test]
    fn attribute_pairs_are_in_memory_order() {
        let word = pair(0x0102_0304, 0x0A0B_0C0D).to_ne_bytes();
        assert_eq!(word[..4], 0x0102_0304u32.to_ne_bytes());
        assert_eq!(word[4..], 0x0A0B_0C0Du32.to_ne_bytes());
    }

    #[test]
    fn registers_pack_as_the_kernel_reads_them() {
        let i = insn(0xbf, 6, 1, 0, 0);
        if cfg!(target_endian = "little") {
            assert_eq!(i.regs, 0x16);
        } else {
            assert_eq!(i.regs, 0x61);
        }
    }

    #[test]
    fn program_ends_in_exit_and_jumps_in_bounds() {
        let p = program(3);
        assert_eq!(p.last().map(|i| i.code), Some(0x95));
        for (pc, i) in p.iter().enumerate() {
            if i.code == 0x15 {
                let target = pc as i64 + 1 + i64::from(i.off);
                assert!((0..p.len() as i64).contains(&target));
            }
        }
    }
}
