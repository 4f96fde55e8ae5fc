//! Configuring the container end inside the pod (docs/cni-spec-notes.md §10.2 step 8, the reference's sysctls and
//! `ConfigureIface`): DAD and ARP-notify sysctls, IPv6 enabled where needed, addresses, link up, addresses
//! settled, routes.

use crate::pod_worker::PodWorker;
use twill_cni::{CniResult, Context, Result};
use twill_kernel::{sysctl, AddressOptions, Handle};
use twill_veth::pod::{enable_ipv6, KeepAddrOnDown};

/// DAD and ARP-notify sysctls of the container interface, queued on the pod thread; they need only the
/// interface, so ADD sets them while it attaches the host port and IPAM is still running. Wait on the
/// returned channel.
pub fn start_sysctls(
    pod: &PodWorker,
    pod_handle: &Handle,
    ifname: &str,
    index: u32,
    enable_dad: bool,
) -> Result<std::sync::mpsc::Receiver<()>> {
    let ifname = ifname.to_string();
    let h = pod_handle.clone();
    pod.submit(move || {
        // Best effort like the reference: IPv6 may be disabled in the pod. The interface was just created
        // (it holds the pod's defaults), so the values are written without reading them first.
        if enable_dad {
            let _ = sysctl::set(&format!("net/ipv6/conf/{ifname}/enhanced_dad"), "1");
            let _ = sysctl::set(&format!("net/ipv6/conf/{ifname}/accept_dad"), "1");
        } else {
            let _ = sysctl::set(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0");
        }
        // Gratuitous ARP when the link comes up: neighbours forget a reused IP's old MAC at once. Over
        // netlink: the /proc/sys/net/ipv4 path walk costs ~0.3 ms per 1,000 namespaces on the host.
        if h.enable_arp_notify(index).is_err() {
            let _ = sysctl::set(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1");
        }
    })
}

/// Addresses, up, settle, routes. `result` is the final result (IPs already point at the container
/// interface); route gateways default to the family's gateway, as the reference's `ConfigureIface`.
pub fn configure(
    pod: &PodWorker,
    h: &Handle,
    ifname: &str,
    index: u32,
    result: &CniResult,
    enable_dad: bool,
) -> Result<()> {
    if result.ips.iter().any(|i| i.address.addr().is_ipv6()) {
        let ifname = ifname.to_string();
        pod.run(move || enable_ipv6(&ifname, KeepAddrOnDown::BestEffort))??;
    }
    for ip in &result.ips {
        // Without DAD the address would be usable at once anyway; IFA_F_NODAD just skips the tentative
        // phase so nothing has to wait for it.
        let opts = AddressOptions {
            nodad: ip.address.addr().is_ipv6() && !enable_dad,
            no_prefix_route: false,
        };
        h.add_address_with(index, ip.address, opts)
            .with_context(|| format!("failed to add IP addr {} to {ifname:?}", ip.address))?;
    }
    let (v4gw, v6gw) = twill_veth::routes::gateways(&result.ips);
    h.set_link_up(index)
        .with_context(|| format!("failed to set {ifname:?} up"))?;
    if v6gw.is_some() && enable_dad {
        twill_veth::pod::settle_ipv6(h, ifname, index)?;
    }
    twill_veth::routes::add(h, ifname, index, &result.routes, v4gw, v6gw)
}

/// L2-only mode: just bring the container end up.
pub fn up_only(h: &Handle, ifname: &str, index: u32) -> Result<()> {
    h.set_link_up(index)
        .with_context(|| format!("failed to set {ifname:?} up"))
}
