//! ADD (docs/cni-spec-notes.md §10.2), transactional: every step registers its undo, rollback runs them in reverse,
//! and IPAM is released last.

use crate::config::BridgeConf;
use crate::handles::{host_handle, open_pod};
use crate::job::Job;
use crate::{bridge_dev, container, gateway, ipam, masq, pod_worker, port, spoofchk, trace};
use ipnet::IpNet;
use std::cell::RefCell;
use std::time::{Duration, Instant};
use twill_cni::env::Command;
use twill_cni::{CniResult, Context, Error, Interface, Request, Result, Undo};
use twill_kernel::{Family, Handle, Link, OperState};

/// The reference polls the host port for oper-UP for up to ~2.55 s (docs/cni-spec-notes.md §10.2 step 12).
const OPER_UP_TIMEOUT: Duration = Duration::from_millis(2550);

fn iface(link: &Link) -> Interface {
    Interface {
        name: link.name.clone(),
        mac: link.mac.map(|m| m.to_string()),
        ..Default::default()
    }
}

/// Check the host port once; poll (with short, growing pauses) only if the kernel has not yet propagated the
/// carrier (linkwatch runs asynchronously). The reference always sleeps in steps of 50 ms and more.
fn wait_oper_up(host: &Handle, index: u32) -> Result<Link> {
    let start = Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        let link = host
            .link_by_index(index)
            .context("failed to look up host veth")?;
        if link.oper_state == OperState::Up {
            return Ok(link);
        }
        if start.elapsed() >= OPER_UP_TIMEOUT {
            return Err(Error::failed(format!(
                "bridge port in error state: {:?}",
                link.oper_state
            )));
        }
        std::thread::sleep(pause);
        // Capped low: under load linkwatch is late, and a long pause would overshoot its arrival.
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

/// Where ADD's IPAM call stands, for the rollback: a running call is waited for, and only a successful one
/// is released.
enum IpamState {
    NotAsked,
    Running(ipam::Pending),
    /// Finished; whether it succeeded.
    Done(bool),
}

pub fn add(req: &Request) -> Result<CniResult> {
    let mut trace = trace::Trace::new();
    let conf = BridgeConf::load(req)?;
    let container_id = req.container_id()?.as_str();
    let ifname = req.ifname()?.as_str();
    let netns_path = req.netns()?;
    let network = req.config.name.as_str();

    let pod = open_pod(netns_path)?;
    // Declared after `pod`: the worker is joined before the namespace fd closes. It opens the pod's socket
    // and looks the ifname up while this thread ensures the bridge.
    let mut pod_worker = pod_worker::PodWorker::start(&pod, ifname)?;
    let host = host_handle()?;
    let br = bridge_dev::ensure(&host, &conf)?;
    trace.mark("bridge ensured");
    let (pod_h, ifname_taken) = pod_worker.ready()?;
    // docs/cni-spec-notes.md §4: the name must be free in the pod. Checked before IPAM is asked, so a repeated ADD of a
    // live attachment can never end in releasing that attachment's lease.
    if ifname_taken {
        return Err(Error::failed(format!(
            "container veth name provided ({ifname}) already exists"
        )));
    }
    trace.mark("pod socket, ifname free");

    // Declaration order is rollback order in reverse: `undo` (kernel and firewall steps) runs first, then
    // IPAM is released — last, so its addresses are never handed out again while a half-built attachment
    // still uses them. Only a successful IPAM ADD is released (a failed one cleaned up after itself, as
    // the reference assumes); a still-running one is waited for first.
    let ipam_state = RefCell::new(IpamState::NotAsked);
    let mut ipam_undo = Undo::new();
    if let Some(t) = conf.ipam_type.as_deref() {
        *ipam_state.borrow_mut() = IpamState::Running(ipam::spawn(t, Command::Add, req)?);
        let state = &ipam_state;
        ipam_undo.push(format!("release IPAM ({t})"), move || {
            let succeeded = match state.replace(IpamState::Done(false)) {
                IpamState::Running(p) => p.wait_result(req).is_ok(),
                IpamState::Done(ok) => ok,
                IpamState::NotAsked => false,
            };
            if succeeded {
                ipam::run(t, Command::Del, req)
            } else {
                Ok(())
            }
        });
    }
    trace.mark("IPAM started");
    let mut undo = Undo::new();
    // Declared after `undo`, so it is joined before any rollback step runs.
    let mut masq_job: Option<Job> = None;

    let pair = port::create_pair(
        &host,
        &pod,
        &pod_h,
        &br,
        container_id,
        ifname,
        conf.mtu,
        conf.mac,
    )?;
    let host_index = pair.host.index;
    trace.mark("veth created");
    let host_name = pair.host.name.clone();
    undo.push(format!("delete veth {host_name}"), {
        let host = &host;
        move || match host.delete_link(host_index) {
            Err(e) if !e.is_not_found() => Err(Error::failed(e.to_string())),
            _ => Ok(()),
        }
    });
    // The pod's sysctls (L3 mode only, as the reference) on the pod thread while the host port is attached.
    let sysctls = match conf.ipam_type {
        Some(_) => Some(container::start_sysctls(
            &pod_worker,
            &pod_h,
            ifname,
            pair.container_index,
            conf.enable_dad,
        )?),
        None => None,
    };
    port::configure_port(&host, &pair.host, &port::PortConfig::of(&conf))?;
    let cont = pod_h
        .link_by_index(pair.container_index)
        .with_context(|| format!("failed to look up {ifname:?} in the pod"))?;
    trace.mark("port attached");
    let mut container_iface = iface(&cont);
    container_iface.sandbox = Some(netns_path.display().to_string());
    let mut result = CniResult {
        interfaces: vec![iface(&br), iface(&pair.host), container_iface],
        ..Default::default()
    };

    if conf.macspoofchk {
        let mac = cont
            .mac
            .ok_or_else(|| Error::failed(format!("{ifname:?} has no MAC address")))?;
        spoofchk::setup(container_id, ifname, &host_name, mac)?;
        undo.push("remove macspoofchk rules", move || {
            spoofchk::teardown(container_id, ifname)
        });
    }

    if let Some(done) = sysctls {
        done.recv()
            .map_err(|_| Error::failed("pod thread stopped before setting sysctls"))?;
        trace.mark("pod sysctls");
    }
    if let IpamState::Running(p) = ipam_state.replace(IpamState::Done(false)) {
        let ipam_result = p.wait_result(req)?;
        *ipam_state.borrow_mut() = IpamState::Done(true);
        trace.mark("IPAM result");
        result.ips = ipam_result.ips;
        result.routes = ipam_result.routes;
        result.dns = ipam_result.dns;
        if result.ips.is_empty() {
            return Err(Error::failed("IPAM plugin returned missing IP config"));
        }
        let gws = gateway::shape(&mut result, &conf)?;
        if conf.ip_masq {
            // Only the addresses are needed: install the rules while the pod is configured.
            let (backend, owner) = (
                conf.masq_backend,
                masq::Owner::new(network, container_id, ifname),
            );
            undo.push("remove IP masquerade", {
                let owner = owner.clone();
                move || masq::del(backend, &owner)
            });
            let addrs: Vec<IpNet> = result.ips.iter().map(|i| i.address).collect();
            masq_job = Some(Job::spawn("masquerade", move || {
                masq::add(backend, &owner, &addrs)
            })?);
        }
        container::configure(
            &pod_worker,
            &pod_h,
            ifname,
            cont.index,
            &result,
            conf.enable_dad,
        )?;
        trace.mark("container configured");
        if conf.is_gateway {
            let mut vlan_iface: Option<Link> = None;
            for (family, list) in [(Family::V4, &gws.v4), (Family::V6, &gws.v6)] {
                for gw in list {
                    let target = match conf.vlan {
                        Some(vlan) => {
                            if vlan_iface.is_none() {
                                let l = bridge_dev::ensure_vlan_interface(&host, &br, vlan, &conf)
                                    .context("failed to create vlan interface")?;
                                result.interfaces.push(iface(&l));
                                vlan_iface = Some(l);
                            }
                            vlan_iface
                                .clone()
                                .ok_or_else(|| Error::failed("vlan interface missing"))?
                        }
                        None => br.clone(),
                    };
                    bridge_dev::ensure_addr(&host, &target, *gw, conf.force_address, target.mac)
                        .with_context(|| {
                            if conf.vlan.is_some() {
                                "failed to set vlan interface for bridge with addr"
                            } else {
                                "failed to set bridge addr"
                            }
                        })?;
                }
                if !list.is_empty() {
                    bridge_dev::enable_forwarding(family)?;
                }
            }
        }
        trace.mark("gateway");
    } else if !conf.disable_container_interface {
        container::up_only(&pod_h, ifname, cont.index)?;
    }

    trace.mark("L2 up");
    // The host port's MAC and the bridge's may have changed (first port joining, MAC pinning).
    let host_link = if conf.disable_container_interface {
        host.link_by_index(host_index)
            .context("failed to look up host veth")?
    } else {
        wait_oper_up(&host, host_index)?
    };
    trace.mark("oper up");
    result.interfaces[1] = iface(&host_link);
    let br_now = host
        .link_by_index(br.index)
        .with_context(|| format!("could not lookup {:?}", conf.bridge))?;
    result.interfaces[0] = iface(&br_now);
    if let Some(dns) = &conf.dns {
        result.dns = dns.clone();
    }
    if let Some(job) = masq_job.take() {
        job.join()?;
        trace.mark("masquerade");
    }
    undo.commit();
    ipam_undo.commit();
    trace.mark("done");
    Ok(result)
}
