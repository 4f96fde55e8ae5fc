//! host-local's state as tests see it: `<dataDir>/<network>/<ip>` files, one per address held.

use std::path::Path;

/// The addresses held in a host-local network directory (file names that parse as IP addresses), sorted.
/// A missing directory holds nothing.
pub fn held(network_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(network_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
