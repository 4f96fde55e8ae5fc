//! Command-line flags, named as flanneld's for etcd mode (docs/architecture.md, "Flags"). Every flag can also be
//! given as the environment variable `FLANNELD_<FLAG_UPPER_SNAKE>` (e.g. `FLANNELD_ETCD_ENDPOINTS`); a flag on the
//! command line wins over the environment.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

/// Which firewall tool carries the `--ip-masq` rules (docs/architecture.md, "Traffic rules").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulesBackend {
    Nftables,
    Iptables,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: String,
    pub etcd_cafile: Option<PathBuf>,
    pub etcd_certfile: Option<PathBuf>,
    pub etcd_keyfile: Option<PathBuf>,
    pub etcd_username: Option<String>,
    pub etcd_password: Option<String>,
    pub iface: Vec<String>,
    pub public_ip: Option<Ipv4Addr>,
    pub ip_masq: bool,
    pub rules_backend: RulesBackend,
    pub subnet_file: PathBuf,
    /// Renew this long before the lease expires (`--subnet-lease-renew-margin`, minutes, 1..=1439).
    pub renew_margin: Duration,
    /// TTL of our etcd lease; flannel's is 24 h (docs/architecture.md, "etcd layout"). Shorter values are for tests.
    pub lease_ttl: Duration,
    pub healthz_ip: IpAddr,
    pub healthz_port: u16,
    pub node_name: String,
    pub resync: Duration,
    /// Every this many resyncs the kernel is read back even if no notification reported a change.
    pub resync_full_every: u32,
    /// `Some` in Kubernetes mode (`--kube-subnet-mgr`): subnets come from the Node objects, not etcd.
    pub kube: Option<KubeOptions>,
}

/// The flags of Kubernetes mode, named as flanneld's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeOptions {
    pub api_url: Option<String>,
    pub kubeconfig_file: Option<PathBuf>,
    pub annotation_prefix: String,
    pub net_config_path: PathBuf,
    /// Clear the node's NetworkUnavailable condition once this node is ready (flanneld's default: true).
    pub set_node_network_unavailable: bool,
}

/// Parsing outcome: run, print help, or print the version.
pub enum Parsed {
    Run(Box<Options>),
    Help,
    Version,
}

/// `twilld v<version>, commit <id>`: `TWILL_COMMIT` is set by `scripts/release.sh`; other builds say `unknown`.
pub fn version_line() -> String {
    format!(
        "twilld v{}, commit {}",
        env!("CARGO_PKG_VERSION"),
        option_env!("TWILL_COMMIT").unwrap_or("unknown")
    )
}

pub const USAGE: &str = "\
Usage: twilld [--version | --help | flags]   (each flag also as env FLANNELD_<FLAG>, e.g. FLANNELD_ETCD_ENDPOINTS)
  --etcd-endpoints=URLS            comma list (default http://127.0.0.1:4001,http://127.0.0.1:2379)
  --etcd-prefix=PATH               default /coreos.com/network
  --etcd-cafile/--etcd-certfile/--etcd-keyfile=FILE   TLS (used when cert and key are both given)
  --etcd-username/--etcd-password=S                   basic auth
  --iface=NAME|IP                  underlay interface (repeatable; default: the default-route interface)
  --public-ip=IP                   advertised underlay address (default: the interface's first IPv4)
  --ip-masq                        install masquerade and forward rules
  --ip-masq-backend=nftables|iptables   default nftables
  --subnet-file=PATH               default /run/flannel/subnet.env
  --subnet-lease-renew-margin=MIN  default 60 (1..1439)
  --subnet-lease-ttl=SECONDS       default 86400 (flannel's 24 h)
  --healthz-ip=IP --healthz-port=N default 0.0.0.0 / 0 (off)
  --node-name=NAME                 node identity (default: hostname)
  --resync=SECONDS                 reconcile period (default 10)
  --resync-full-every=N            read the kernel back every N-th resync even when no lease event or
                                   kernel notification says anything changed (default 10; 1 = always)
Kubernetes mode (subnets from node.spec.podCIDR, peers from node annotations, as flanneld --kube-subnet-mgr):
  --kube-subnet-mgr                use the Kubernetes API instead of etcd (node name: --node-name, else env
                                   NODE_NAME, else the hostname)
  --kubeconfig-file=FILE           kubeconfig to use (default: in-cluster service account config)
  --kube-api-url=URL               API server URL (overrides the kubeconfig's server)
  --kube-annotation-prefix=P       default flannel.alpha.coreos.com
  --net-config-path=FILE           network config (default /etc/kube-flannel/net-conf.json)
  --set-node-network-unavailable=BOOL  clear the node's NetworkUnavailable condition when ready (default true)
";

const FLAGS: &[&str] = &[
    "etcd-endpoints",
    "etcd-prefix",
    "etcd-cafile",
    "etcd-certfile",
    "etcd-keyfile",
    "etcd-username",
    "etcd-password",
    "iface",
    "public-ip",
    "ip-masq",
    "ip-masq-backend",
    "subnet-file",
    "subnet-lease-renew-margin",
    "subnet-lease-ttl",
    "healthz-ip",
    "healthz-port",
    "node-name",
    "resync",
    "resync-full-every",
    "kube-subnet-mgr",
    "kubeconfig-file",
    "kube-api-url",
    "kube-annotation-prefix",
    "net-config-path",
    "set-node-network-unavailable",
];
const BOOL_FLAGS: &[&str] = &["ip-masq", "kube-subnet-mgr", "set-node-network-unavailable"];

fn env_name(flag: &str) -> String {
    format!("FLANNELD_{}", flag.replace('-', "_").to_ascii_uppercase())
}

/// Parses `args` (without argv[0]) with `env` as the fallback source.
pub fn parse<I, E>(args: I, env: E) -> Result<Parsed, String>
where
    I: IntoIterator<Item = String>,
    E: Fn(&str) -> Option<String>,
{
    let mut given: Vec<(String, String)> = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Parsed::Help);
        }
        if arg == "--version" {
            return Ok(Parsed::Version);
        }
        let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(format!("unexpected argument {arg:?}"));
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (body.to_string(), None),
        };
        if !FLAGS.contains(&name.as_str()) {
            return Err(format!("unknown flag --{name}"));
        }
        let value = match value {
            Some(v) => v,
            None if BOOL_FLAGS.contains(&name.as_str()) => "true".into(),
            None => it
                .next()
                .ok_or_else(|| format!("flag --{name} needs a value"))?,
        };
        given.push((name, value));
    }
    // Repeatable flags collect all values; others take the last one.
    let all = |name: &str| -> Vec<String> {
        let v: Vec<String> = given
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect();
        if v.is_empty() {
            env(&env_name(name)).map(|s| vec![s]).unwrap_or_default()
        } else {
            v
        }
    };
    let one = |name: &str| -> Option<String> { all(name).pop().filter(|s| !s.is_empty()) };
    let boolean_or = |name: &str, default: bool| -> Result<bool, String> {
        match one(name).as_deref() {
            None => Ok(default),
            Some("true" | "1" | "t" | "T" | "TRUE" | "True") => Ok(true),
            Some("false" | "0" | "f" | "F" | "FALSE" | "False") => Ok(false),
            Some(v) => Err(format!("--{name}: {v:?} is not a boolean")),
        }
    };
    let boolean = |name: &str| boolean_or(name, false);
    fn num<T: std::str::FromStr>(name: &str, v: Option<String>, default: T) -> Result<T, String> {
        match v {
            None => Ok(default),
            Some(s) => s
                .parse()
                .map_err(|_| format!("--{name}: {s:?} is not a valid number")),
        }
    }

    let renew_minutes: u64 = num(
        "subnet-lease-renew-margin",
        one("subnet-lease-renew-margin"),
        60,
    )?;
    if !(1..=1439).contains(&renew_minutes) {
        return Err(format!(
            "--subnet-lease-renew-margin={renew_minutes}: must be between 1 and 1439 minutes"
        ));
    }
    let ttl: u64 = num("subnet-lease-ttl", one("subnet-lease-ttl"), 86_400)?;
    if ttl < 5 {
        return Err(format!(
            "--subnet-lease-ttl={ttl}: must be at least 5 seconds"
        ));
    }
    let resync: f64 = num("resync", one("resync"), 10.0)?;
    if !(resync.is_finite() && resync > 0.0 && resync <= 86_400.0) {
        return Err(format!(
            "--resync={resync}: must be a positive number of seconds"
        ));
    }
    let resync_full_every: u32 = num(
        "resync-full-every",
        one("resync-full-every"),
        crate::reconcile::FULL_EVERY,
    )?;
    if resync_full_every == 0 {
        return Err("--resync-full-every=0: must be at least 1".into());
    }
    let public_ip = match one("public-ip") {
        None => None,
        Some(s) => Some(
            s.parse()
                .map_err(|_| format!("--public-ip: {s:?} is not an IPv4 address"))?,
        ),
    };
    let healthz_ip = match one("healthz-ip") {
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(s) => s
            .parse()
            .map_err(|_| format!("--healthz-ip: {s:?} is not an IP address"))?,
    };
    let rules_backend = match one("ip-masq-backend").as_deref() {
        None | Some("nftables") => RulesBackend::Nftables,
        Some("iptables") => RulesBackend::Iptables,
        Some(v) => {
            return Err(format!(
                "--ip-masq-backend: {v:?} is neither nftables nor iptables"
            ))
        }
    };
    let kube = match boolean("kube-subnet-mgr")? {
        false => None,
        true => Some(KubeOptions {
            api_url: one("kube-api-url"),
            kubeconfig_file: one("kubeconfig-file").map(PathBuf::from),
            annotation_prefix: one("kube-annotation-prefix")
                .unwrap_or_else(|| "flannel.alpha.coreos.com".into()),
            net_config_path: PathBuf::from(
                one("net-config-path").unwrap_or_else(|| "/etc/kube-flannel/net-conf.json".into()),
            ),
            set_node_network_unavailable: boolean_or("set-node-network-unavailable", true)?,
        }),
    };
    // In Kubernetes mode the node name is the Node object's: the DaemonSet passes it as NODE_NAME (the
    // downward API's spec.nodeName), as it does to flanneld.
    let node_name = match one("node-name") {
        Some(n) => n,
        None => match env("NODE_NAME").filter(|n| kube.is_some() && !n.is_empty()) {
            Some(n) => n,
            None => hostname().ok_or("--node-name not given and the hostname is unknown")?,
        },
    };
    let endpoints = one("etcd-endpoints")
        .unwrap_or_else(|| "http://127.0.0.1:4001,http://127.0.0.1:2379".into());
    let etcd_endpoints: Vec<String> = endpoints
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if etcd_endpoints.is_empty() {
        return Err("--etcd-endpoints is empty".into());
    }
    let mut etcd_prefix = one("etcd-prefix").unwrap_or_else(|| "/coreos.com/network".into());
    while etcd_prefix.len() > 1 && etcd_prefix.ends_with('/') {
        etcd_prefix.pop();
    }
    Ok(Parsed::Run(Box::new(Options {
        etcd_endpoints,
        etcd_prefix,
        etcd_cafile: one("etcd-cafile").map(PathBuf::from),
        etcd_certfile: one("etcd-certfile").map(PathBuf::from),
        etcd_keyfile: one("etcd-keyfile").map(PathBuf::from),
        etcd_username: one("etcd-username"),
        etcd_password: one("etcd-password"),
        iface: all("iface")
            .into_iter()
            .flat_map(|s| s.split(',').map(String::from).collect::<Vec<_>>())
            .collect(),
        public_ip,
        ip_masq: boolean("ip-masq")?,
        rules_backend,
        subnet_file: PathBuf::from(
            one("subnet-file").unwrap_or_else(|| "/run/flannel/subnet.env".into()),
        ),
        renew_margin: Duration::from_secs(renew_minutes * 60),
        lease_ttl: Duration::from_secs(ttl),
        healthz_ip,
        healthz_port: num("healthz-port", one("healthz-port"), 0)?,
        node_name,
        resync: Duration::from_secs_f64(resync),
        resync_full_every,
        kube,
    })))
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Options, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match parse(args.iter().map(|s| s.to_string()), |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })? {
            Parsed::Run(o) => Ok(*o),
            Parsed::Help => Err("help".into()),
            Parsed::Version => Err("version".into()),
        }
    }

    #[test]
    fn version_flag_answers_version_and_commit() {
        assert_eq!(run(&["--version"], &[]).unwrap_err(), "version");
        let line = version_line();
        assert!(line.starts_with(&format!("twilld v{}, commit ", env!("CARGO_PKG_VERSION"))));
    }

    #[test]
    fn flags_env_and_defaults() {
        let o = run(
            &[
                "--etcd-endpoints",
                "http://10.0.0.1:2379",
                "--ip-masq",
                "--node-name=n1",
                "--resync=1.5",
            ],
            &[
                ("FLANNELD_ETCD_PREFIX", "/x/net/"),
                ("FLANNELD_ETCD_ENDPOINTS", "http://ignored:1"),
            ],
        )
        .unwrap();
        assert_eq!(o.etcd_endpoints, vec!["http://10.0.0.1:2379"]);
        assert_eq!(o.etcd_prefix, "/x/net");
        assert!(o.ip_masq);
        assert_eq!(o.resync, Duration::from_millis(1500));
        assert_eq!(o.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(o.renew_margin, Duration::from_secs(3600));
        assert_eq!(o.resync_full_every, 10);
        let o = run(&["--node-name=n", "--resync-full-every=1"], &[]).unwrap();
        assert_eq!(o.resync_full_every, 1);
        assert!(run(&["--node-name=n", "--resync-full-every=0"], &[]).is_err());
        let e = run(&["--node-name=n", "--ip-masq=maybe"], &[]).unwrap_err();
        assert!(e.contains("not a boolean"), "{e}");
        assert!(run(&["--bogus"], &[]).unwrap_err().contains("unknown flag"));
        assert!(run(&["--node-name=n", "--subnet-lease-renew-margin=1440"], &[]).is_err());
        let o = run(
            &[],
            &[
                ("FLANNELD_NODE_NAME", "envnode"),
                ("FLANNELD_IP_MASQ", "true"),
            ],
        )
        .unwrap();
        assert_eq!(o.node_name, "envnode");
        assert!(o.ip_masq);
    }

    #[test]
    fn kube_mode_flags_have_flanneld_defaults_and_node_name_from_env() {
        let o = run(&["--node-name=n"], &[("NODE_NAME", "ignored")]).unwrap();
        assert_eq!(o.kube, None);
        assert_eq!(o.node_name, "n");
        let o = run(&["--kube-subnet-mgr"], &[("NODE_NAME", "worker-1")]).unwrap();
        assert_eq!(o.node_name, "worker-1");
        let k = o.kube.unwrap();
        assert_eq!(k.annotation_prefix, "flannel.alpha.coreos.com");
        assert_eq!(
            k.net_config_path,
            PathBuf::from("/etc/kube-flannel/net-conf.json")
        );
        assert!(k.set_node_network_unavailable);
        assert_eq!((k.api_url, k.kubeconfig_file), (None, None));
        let o = run(
            &[
                "--kube-subnet-mgr",
                "--node-name=a",
                "--kubeconfig-file=/k/config",
                "--kube-api-url=https://10.0.0.1:6443",
                "--set-node-network-unavailable=false",
                "--kube-annotation-prefix=example.com",
            ],
            &[("NODE_NAME", "b")],
        )
        .unwrap();
        assert_eq!(o.node_name, "a");
        let k = o.kube.unwrap();
        assert_eq!(k.kubeconfig_file, Some(PathBuf::from("/k/config")));
        assert_eq!(k.api_url.as_deref(), Some("https://10.0.0.1:6443"));
        assert!(!k.set_node_network_unavailable);
        assert_eq!(k.annotation_prefix, "example.com");
        let o = run(
            &[],
            &[("FLANNELD_KUBE_SUBNET_MGR", "true"), ("NODE_NAME", "c")],
        )
        .unwrap();
        assert_eq!(o.node_name, "c");
        assert!(o.kube.is_some());
    }
}
