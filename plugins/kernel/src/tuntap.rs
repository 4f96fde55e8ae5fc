//! Persistent tap devices. The kernel creates tun/tap devices only through `/dev/net/tun` (rtnetlink
//! refuses them), in the namespace of the process that opened it: the open and the ioctls run on a
//! thread inside the target namespace ([`NetNs::run`]). Until `TUNSETPERSIST`, the device lives only as
//! long as the fd, so a failure before it leaves nothing behind.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::error::{Error, Result};
use crate::netns::NetNs;

const TUN_DEVICE: &str = "/dev/net/tun";

/// From linux/if_tun.h: `_IOW('T', n, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// Fail with EBUSY instead of attaching to an existing device of that name.
const IFF_TUN_EXCL: libc::c_short = -0x8000;

/// A tap to create.
#[derive(Debug, Clone, Default)]
pub struct TapSpec {
    pub name: String,
    pub multi_queue: bool,
    /// Frames carry the 4-byte packet information header (IFF_NO_PI unset).
    pub packet_info: bool,
    /// Frames carry a virtio-net header (IFF_VNET_HDR).
    pub vnet_hdr: bool,
    /// Uid allowed to attach; `None`: any process with CAP_NET_ADMIN only.
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags, padded to the union's size.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ioctl(fd: i32, request: libc::c_ulong, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the tun ioctls used here take an integer argument.
    if unsafe { libc::ioctl(fd, request as _, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn create(spec: &TapSpec) -> io::Result<()> {
    let name = spec.name.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "invalid device name",
        ));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(TUN_DEVICE)?;
    let fd = tun.as_raw_fd();
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_TUN_EXCL,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name);
    if spec.multi_queue {
        req.flags |= IFF_MULTI_QUEUE;
    }
    if !spec.packet_info {
        req.flags |= IFF_NO_PI;
    }
    if spec.vnet_hdr {
        req.flags |= IFF_VNET_HDR;
    }
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` lays out.
    if unsafe { libc::ioctl(fd, TUNSETIFF as _, &mut req as *mut IfReq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some(uid) = spec.owner {
        ioctl(fd, TUNSETOWNER, uid.into())?;
    }
    if let Some(gid) = spec.group {
        ioctl(fd, TUNSETGROUP, gid.into())?;
    }
    ioctl(fd, TUNSETPERSIST, 1)
}

/// Creates the persistent tap `spec.name` in `netns` (down). An existing device of that name is
/// EBUSY, never attached to.
pub fn create_tap(netns: &NetNs, spec: &TapSpec) -> Result<()> {
    let label = netns.path().display().to_string();
    netns
        .run(|| create(spec))?
        .map_err(|e| Error::new("create tap", spec.name.as_str(), label, e))
}
