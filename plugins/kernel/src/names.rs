//! Generated device names.

use std::io;

/// A random host-side veth name, `veth` + 8 hex digits (as the reference plugins), from
/// getrandom(2): 4 random bytes, no userspace RNG state to seed.
pub fn random_veth_name() -> io::Result<String> {
    let mut bytes = [0u8; 4];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: writes at most the remaining length into our buffer.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
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
    Ok(format!("veth{:08x}", u32::from_ne_bytes(bytes)))
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
