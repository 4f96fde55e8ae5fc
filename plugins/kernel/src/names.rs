//! Generated device names, and the random bytes behind them.

use std::io;

/// A random host-side veth name, `veth` + 8 hex digits (as the reference plugins).
pub fn random_veth_name() -> io::Result<String> {
    let mut bytes = [0u8; 4];
    random_bytes(&mut bytes)?;
    Ok(format!("veth{:08x}", u32::from_ne_bytes(bytes)))
}

/// Fills `buf` from getrandom(2): no userspace RNG state to seed.
///
/// The system call itself, not libc's wrapper: in the static musl build, `std` refers to `getrandom` weakly,
/// fat LTO merges that with a reference of ours, and the linker does not pull a weakly referenced member out
/// of `libc.a`, so the wrapper's address was null (a crash in every ptp, bridge and tap ADD).
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: writes at most `rest.len()` bytes into `rest`.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getrandom,
                rest.as_mut_ptr(),
                rest.len(),
                0 as libc::c_uint,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn veth_names_are_valid_and_differ() {
        let a = super::random_veth_name().unwrap();
        let b = super::random_veth_name().unwrap();
        assert_eq!(a.len(), 12);
        assert!(a.starts_with("veth") && a[4..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
