//! The "kernel floor": the time the kernel work of one pod ADD takes on this machine, done in-process with
//! twill-kernel's public API, so the bridge and scale benchmarks can report how far above it the plugins are.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use twill_kernel::{
    random_veth_name, Error, Handle, IpNet, Link, NetNs, Result, Route, VethOptions, VethSpec,
};

/// Per iteration, in a fresh pod namespace (created outside the timed part), times what a bridge
/// ADD must ask of the kernel: open a netlink socket inside the pod namespace, create a veth (host end
/// up) with the peer `eth0` directly in the pod namespace, set `eth0` up, add 10.99.0.2/24 to it and a
/// default route via 10.99.0.1. The host ends live in one unnamed "node" namespace, so nothing
/// touches the host; all namespaces are unnamed and vanish when the function returns. Not timed:
/// namespace creation and teardown (the runtime's job). Needs CAP_SYS_ADMIN and CAP_NET_ADMIN.
/// Returns one duration per iteration, in run order.
pub fn measure_kernel_floor(iterations: usize) -> Result<Vec<Duration>> {
    let node = NetNs::create_unnamed()?;
    let host = Handle::in_netns(&node)?;
    let pod_net = IpNet::new(IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2)), 24).expect("prefix length");
    let gateway = IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1));
    let mut samples = Vec::with_capacity(iterations);
    // Dropped only at the end: tearing a namespace down runs in a kernel worker that takes the
    // rtnl lock, which would otherwise land inside the next iteration's timing.
    let mut pods = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let pod = NetNs::create_unnamed()?;
        let host_name = random_veth_name()
            .map_err(|e| Error::new("generate veth name", "", host.netns(), e))?;
        let start = Instant::now();
        let pod_handle = Handle::in_netns(&pod)?;
        // One queue per end, as the bridge plugin asks (see `VethOptions::single_queue`).
        let veth = host.create_veth_with(
            &VethSpec {
                name: host_name,
                peer_name: "eth0".to_string(),
                peer_netns: Some(&pod),
                up: true,
                ..Default::default()
            },
            &VethOptions {
                single_queue: true,
                ..Default::default()
            },
        )?;
        let eth0 = match veth.peer_index {
            Some(i) => i,
            None => pod_handle.link_by_name("eth0")?.index,
        };
        pod_handle.set_link_up(eth0)?;
        pod_handle.add_address(eth0, pod_net)?;
        pod_handle.add_route(&Route::default_via(gateway).dev(eth0))?;
        samples.push(start.elapsed());
        pods.push(pod);
    }
    drop(pods);
    Ok(samples)
}

/// The kernel work of one pod ADD on a bridge, as one synchronous netlink sequence without a plugin: open
/// a socket in `pod`, create a veth `host_name` (up, enslaved to `master` in the creating request, one
/// queue per end) with its peer `eth0` directly in `pod`, set `eth0` up, add `address` to it and a default
/// route via `gateway`. What the bridge plugin asks of the kernel for a pod, minus the process, IPAM and
/// the checks; the scale benchmark times it next to the plugins at the same number of ports. Returns the
/// host end's ifindex (deleting it is the kernel part of a DEL).
///
/// With `arp_notify`, `eth0` announces its address when it comes up (a gratuitous ARP, as the bridge plugin
/// and the reference configure pods): the bridge floods that broadcast to every port and each pod's stack
/// processes it, inside the sending request, so this part grows with the ports on the bridge.
pub fn pod_add_on_bridge(
    host: &Handle,
    pod: &NetNs,
    host_name: &str,
    master: u32,
    address: IpNet,
    gateway: IpAddr,
    arp_notify: bool,
) -> Result<u32> {
    let pod_handle = Handle::in_netns(pod)?;
    let veth = host.create_veth_with(
        &VethSpec {
            name: host_name.to_string(),
            peer_name: "eth0".to_string(),
            peer_netns: Some(pod),
            up: true,
            ..Default::default()
        },
        &VethOptions {
            master: Some(master),
            single_queue: true,
        },
    )?;
    let eth0 = match veth.peer_index {
        Some(i) => i,
        None => pod_handle.link_by_name("eth0")?.index,
    };
    if arp_notify {
        // The gratuitous ARP goes out at link-up only: address first, then up (as the plugin does).
        pod_handle.enable_arp_notify(eth0)?;
        pod_handle.add_address(eth0, address)?;
        pod_handle.set_link_up(eth0)?;
    } else {
        pod_handle.set_link_up(eth0)?;
        pod_handle.add_address(eth0, address)?;
    }
    pod_handle.add_route(&Route::default_via(gateway).dev(eth0))?;
    Ok(veth.index)
}

/// A fresh pod namespace and a veth `name` (up) in `host`'s namespace whose peer `eth0` is in the pod: the
/// untimed set-up of the in-process DEL floors. Keep the pod until the series ends (see above).
pub(crate) fn pod_with_veth(host: &Handle, name: String) -> (NetNs, Link) {
    let pod = NetNs::create_unnamed().expect("pod netns");
    let link = host
        .create_veth(&VethSpec {
            name,
            peer_name: "eth0".into(),
            peer_netns: Some(&pod),
            up: true,
            ..Default::default()
        })
        .expect("create veth");
    (pod, link)
}

#[cfg(test)]
mod tests {
    use super::measure_kernel_floor;

    #[test]
    fn kernel_floor_measures_every_iteration() {
        let mut samples = measure_kernel_floor(5).unwrap();
        assert_eq!(samples.len(), 5);
        samples.sort();
        let (min, median, p90) = (samples[0], samples[2], samples[4]);
        assert!(min > std::time::Duration::ZERO);
        assert!(min <= median && median <= p90);
        eprintln!("kernel floor (debug build): min {min:?} median {median:?} p90 {p90:?}");
    }
}
