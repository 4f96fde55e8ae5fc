//! Test helper: attaches to an existing tap the way an unprivileged VM monitor does, in the calling
//! process's network namespace: `/dev/net/tun` is opened while still root (a runtime hands the monitor
//! that fd), then the process becomes `uid`/`gid` with no supplementary groups, which drops every
//! capability, and asks for the device by name (`TUNSETIFF`). Exits 0 when attached, 1 with the error
//! on stderr otherwise.
//!
//! `twill-tun-attach <name> <uid> <gid> [multi_queue]`

use std::os::fd::AsRawFd;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [name, uid, gid, ..] if name.len() < libc::IFNAMSIZ => uid
            .parse::<u32>()
            .ok()
            .zip(gid.parse::<u32>().ok())
            .map(|ids| (name, ids)),
        _ => None,
    };
    let Some((name, (uid, gid))) = parsed else {
        eprintln!("usage: twill-tun-attach <name> <uid> <gid> [multi_queue]");
        std::process::exit(2);
    };
    let tun = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("open /dev/net/tun: {e}");
            std::process::exit(1);
        }
    };
    // SAFETY: plain credential syscalls; setuid from root to another uid clears every capability.
    let dropped = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(gid) == 0
            && libc::setuid(uid) == 0
    };
    if !dropped {
        eprintln!("drop privileges: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    if args.get(3).map(String::as_str) == Some("multi_queue") {
        req.flags |= IFF_MULTI_QUEUE;
    }
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` lays out.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) } < 0 {
        eprintln!("TUNSETIFF {name}: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
}
