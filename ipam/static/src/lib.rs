//! The `static` IPAM plugin: the addresses, routes and DNS of its configuration, as an IPAM result. It
//! allocates nothing, so DEL, STATUS and GC have nothing to do; CHECK compares `prevResult` with the config.

pub mod config;

use config::StaticConf;
use twill_cni::env::Command;
use twill_cni::{CniResult, Error, IpConfig, Plugin, Request, Result};

#[derive(Debug, Default)]
pub struct Static;

impl Plugin for Static {
    /// An IPAM plugin never enters the pod.
    fn enters_netns(&self, _command: Command) -> bool {
        false
    }

    fn add(&self, req: &Request) -> Result<CniResult> {
        let conf = StaticConf::load(req)?;
        Ok(CniResult {
            interfaces: Vec::new(),
            ips: conf
                .addresses
                .iter()
                .map(|a| IpConfig {
                    interface: None,
                    address: a.address,
                    gateway: a.gateway,
                })
                .collect(),
            routes: conf.routes,
            dns: conf.dns,
        })
    }

    /// Nothing was allocated.
    fn del(&self, _req: &Request) -> Result<()> {
        Ok(())
    }

    /// Every configured address that `prevResult` has carries the configured gateway (the reference's
    /// rule: an address missing from `prevResult` is not an error).
    fn check(&self, req: &Request) -> Result<()> {
        let conf = StaticConf::load(req)?;
        let prev = req
            .config
            .prev_result()?
            .ok_or_else(|| Error::failed("Required prevResult missing"))?;
        let ifname = req.env.ifname.as_ref().map(|i| i.as_str()).unwrap_or("");
        for want in &conf.addresses {
            let Some(got) = prev
                .ips
                .iter()
                .find(|ip| ip.address.addr() == want.address.addr())
            else {
                continue;
            };
            if want.gateway.is_some() && want.gateway != got.gateway {
                return Err(Error::failed(format!(
                    "static: Failed to match addr {} on interface {ifname}",
                    got.address.addr()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(command: Command, config: &str, cni_args: &str) -> Request {
        twill_cni::testing::request(command, config, cni_args)
    }

    fn add(config: &str, cni_args: &str) -> Result<CniResult> {
        Static.add(&req(Command::Add, config, cni_args))
    }

    const BASE: &str = r#"{"cniVersion":"1.0.0","name":"n","type":"ptp","ipam":{"type":"static",
        "addresses":[{"address":"10.10.0.1/24","gateway":"10.10.0.254"},{"address":"3ffe:ffff:0:1::1/64"}],
        "routes":[{"dst":"0.0.0.0/0"},{"dst":"192.168.0.0/16","gw":"10.10.0.253"}],
        "dns":{"nameservers":["8.8.8.8"],"domain":"example.com","search":["example.com"]}}}"#;

    #[test]
    fn config_addresses_routes_and_dns() {
        let r = add(BASE, "").unwrap();
        assert_eq!(r.ips.len(), 2);
        assert_eq!(r.ips[0].address.to_string(), "10.10.0.1/24");
        assert_eq!(r.ips[0].gateway.unwrap().to_string(), "10.10.0.254");
        assert_eq!(r.ips[1].address.to_string(), "3ffe:ffff:0:1::1/64");
        assert!(r.ips[1].gateway.is_none());
        assert_eq!(r.routes.len(), 2);
        assert_eq!(r.dns.domain.as_deref(), Some("example.com"));
    }

    #[test]
    fn cni_args_add_addresses_and_gateways() {
        let r = add(BASE, "IP=10.20.0.5/24,10.30.0.5/24;GATEWAY=10.20.0.1").unwrap();
        let got: Vec<String> = r
            .ips
            .iter()
            .map(|i| format!("{} {:?}", i.address, i.gateway))
            .collect();
        assert_eq!(got[2], "10.20.0.5/24 Some(10.20.0.1)");
        assert_eq!(got[3], "10.30.0.5/24 None");
    }

    #[test]
    fn args_then_runtime_config_replace_addresses() {
        let with_args = BASE.replacen(
            r#""type":"ptp","#,
            r#""type":"ptp","args":{"cni":{"ips":["10.1.0.1/16"]}},"#,
            1,
        );
        let r = add(&with_args, "").unwrap();
        assert_eq!(r.ips.len(), 1);
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.1/16");
        let both = with_args.replacen(
            r#""type":"ptp","#,
            r#""type":"ptp","runtimeConfig":{"ips":["10.2.0.1/16"]},"#,
            1,
        );
        let r = add(&both, "").unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.2.0.1/16");
    }

    #[test]
    fn bad_input_is_refused() {
        let bad_addr = BASE.replace("10.10.0.1/24", "10.10.0.1");
        assert_eq!(add(&bad_addr, "").unwrap_err().code, 7);
        assert_eq!(add(BASE, "IP=10.20.0.5").unwrap_err().code, 7);
        assert_eq!(
            add(BASE, "IP=10.20.0.5/24;GATEWAY=nope").unwrap_err().code,
            7
        );
        assert_eq!(add(BASE, "K8S_POD_NAME=x").unwrap_err().code, 4);
        assert!(add(BASE, "IgnoreUnknown=1;K8S_POD_NAME=x").is_ok());
        assert_eq!(
            add(r#"{"cniVersion":"1.0.0","name":"n"}"#, "")
                .unwrap_err()
                .code,
            7
        );
        let two_v4 = r#"{"cniVersion":"0.2.0","name":"n","ipam":{"type":"static",
            "addresses":[{"address":"10.0.0.1/24"},{"address":"10.0.1.1/24"}]}}"#;
        assert_eq!(add(two_v4, "").unwrap_err().code, 7);
    }

    #[test]
    fn check_compares_gateways() {
        let prev = r#","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.10.0.1/24","gateway":"10.10.0.1"}]}}"#;
        let conf = format!("{}{prev}", &BASE[..BASE.len() - 1]);
        let e = Static.check(&req(Command::Check, &conf, "")).unwrap_err();
        assert!(e.msg.contains("Failed to match addr"), "{e}");
        let ok = conf.replace("\"gateway\":\"10.10.0.1\"", "\"gateway\":\"10.10.0.254\"");
        Static.check(&req(Command::Check, &ok, "")).unwrap();
    }
}
