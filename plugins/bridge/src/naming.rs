//! Names and identities derived from the attachment `(container id, ifname)`.
//!
//! The host end of the veth gets a name that is stable per attachment (`veth` + 8 hex digits of a hash), so
//! an operator can tell which pod a host interface belongs to and a retried ADD after a crash lands on the
//! same name. The reference uses 4 random bytes instead (docs/cni-spec-notes.md §10.2 step 4). A collision with another
//! device is handled like the reference's retry: the next candidate mixes in the attempt number.

/// How many names to try before giving up (the reference also tries 10 random ones).
pub const VETH_NAME_ATTEMPTS: u32 = 10;

/// FNV-1a, 64 bit: tiny, dependency-free, and well spread for short keys.
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Candidate `attempt` (0-based) for the host veth name of the attachment.
pub fn host_veth_name(container_id: &str, ifname: &str, attempt: u32) -> String {
    let h = fnv1a64(&[
        container_id.as_bytes(),
        ifname.as_bytes(),
        &attempt.to_le_bytes(),
    ]);
    format!("veth{:08x}", (h ^ (h >> 32)) as u32)
}

/// A short id of the attachment for names of per-attachment firewall objects (macspoofchk chains).
pub fn attachment_id(container_id: &str, ifname: &str) -> String {
    format!(
        "{:016x}",
        fnv1a64(&[container_id.as_bytes(), ifname.as_bytes()])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_valid_and_distinct() {
        let a = host_veth_name("c1", "eth0", 0);
        assert_eq!(a, host_veth_name("c1", "eth0", 0));
        assert_eq!(a.len(), 12);
        assert!(a.starts_with("veth") && a[4..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, host_veth_name("c1", "eth1", 0));
        assert_ne!(a, host_veth_name("c2", "eth0", 0));
        assert_ne!(a, host_veth_name("c1", "eth0", 1));
        let all: std::collections::HashSet<String> = (0..1000)
            .map(|i| host_veth_name(&format!("container-{i}"), "eth0", 0))
            .collect();
        assert_eq!(all.len(), 1000);
    }
}
