//! Command-line flags, named as flanneld's for etcd mode (docs/architecture.md, "Flags"). Every flag can also be
//! given as the environment variable `FLANNELD_<FLAG_UPPER_SNAKE>` (e.g. `FLANNELD_ETCD_ENDPOINTS`); a flag on the
//! command line wins over the environment.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use crate::logging::{LogFormat, LogLevel};
use crate::node_name::{self, NodeName};

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
    /// `--iface-regex` patterns (repeatable; compiled here so a bad one stops the daemon before it writes anything).
    pub iface_regex: Vec<regex::Regex>,
    pub iface_can_reach: Option<IpAddr>,
    pub public_ip: Option<Ipv4Addr>,
    /// The advertised IPv6 underlay address of a dual-stack or IPv6-only network.
    pub public_ipv6: Option<Ipv6Addr>,
    /// Keep a blackhole route for our own subnet (`--ip-blackhole-route`).
    pub ip_blackhole_route: bool,
    pub ip_masq: bool,
    pub rules_backend: RulesBackend,
    /// `--iptables-forward-rules` (default true, as flanneld): install the FORWARD accept rules.
    pub iptables_forward_rules: bool,
    pub ip_masq_fully_random_disable: bool,
    /// How often the traffic rules are checked (`--iptables-resync`).
    pub iptables_resync: Duration,
    pub subnet_file: PathBuf,
    /// Renew this long before the lease expires (`--subnet-lease-renew-margin`, minutes, 1..=1439).
    pub renew_margin: Duration,
    /// TTL of our etcd lease; flannel's is 24 h (docs/architecture.md, "etcd layout"). Shorter values are for tests.
    pub lease_ttl: Duration,
    pub healthz_ip: IpAddr,
    pub healthz_port: u16,
    /// Which Node this is, or where to learn it ([`crate::node_name`]).
    pub node: NodeName,
    pub resync: Duration,
    /// Every this many resyncs the kernel is read back even if no notification reported a change.
    pub resync_full_every: u32,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
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

/// A command line (or `FLANNELD_*` environment) that cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagsError(pub String);

impl std::fmt::Display for FlagsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FlagsError {}

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
  --iface-regex=REGEX              underlay by a regex on interface addresses, then names (repeatable;
                                   tried after --iface)
  --iface-can-reach=IP             underlay = the interface of the route to IP (tried after --iface-regex)
  --public-ip=IP                   advertised underlay address (default: the interface's first IPv4)
  --public-ipv6=IP                 advertised IPv6 underlay address with EnableIPv6 (default: the interface's
                                   first global IPv6)
  --ip-blackhole-route             keep a blackhole route for the node's subnet while the lease is held
  --ip-masq                        install masquerade rules
  --ip-masq-backend=nftables|iptables   default nftables
  --iptables-forward-rules=BOOL    accept the pod network in FORWARD (default true, also without --ip-masq)
  --ip-masq-fully-random-disable   masquerade without fully-random port allocation
  --iptables-resync=SECONDS        traffic rules check period (default 5, or --resync when shorter)
  --subnet-file=PATH               default /run/flannel/subnet.env
  --subnet-lease-renew-margin=MIN  default 60 (1..1439)
  --subnet-lease-ttl=SECONDS       default 86400 (flannel's 24 h)
  --healthz-ip=IP --healthz-port=N default 0.0.0.0 / 0 (off)
  --node-name=NAME                 node identity (default: hostname; Kubernetes mode: see below)
  --resync=SECONDS                 reconcile period (default 10)
  -v, --v=N                        verbosity as flanneld's: 0 info (default), 1-4 debug, 5+ trace
  --log-level=LEVEL                error|warn|info|debug|trace (overrides -v)
  --log-format=text|json           default text; json: one object per line
  --resync-full-every=N            read the kernel back every N-th resync even when no lease event or
                                   kernel notification says anything changed (default 10; 1 = always)
Kubernetes mode (subnets from node.spec.podCIDR, peers from node annotations, as flanneld --kube-subnet-mgr):
  --kube-subnet-mgr                use the Kubernetes API instead of etcd (node name: --node-name, else env
                                   NODE_NAME, else spec.nodeName of the pod env POD_NAMESPACE/POD_NAME
                                   (needs RBAC pods get), else the hostname)
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
    "iface-regex",
    "iface-can-reach",
    "public-ip",
    "public-ipv6",
    "ip-blackhole-route",
    "ip-masq",
    "ip-masq-backend",
    "iptables-forward-rules",
    "ip-masq-fully-random-disable",
    "iptables-resync",
    "subnet-file",
    "subnet-lease-renew-margin",
    "subnet-lease-ttl",
    "healthz-ip",
    "healthz-port",
    "node-name",
    "resync",
    "resync-full-every",
    "v",
    "log-level",
    "log-format",
    "kube-subnet-mgr",
    "kubeconfig-file",
    "kube-api-url",
    "kube-annotation-prefix",
    "net-config-path",
    "set-node-network-unavailable",
];
const BOOL_FLAGS: &[&str] = &[
    "ip-masq",
    "ip-blackhole-route",
    "iptables-forward-rules",
    "ip-masq-fully-random-disable",
    "kube-subnet-mgr",
    "set-node-network-unavailable",
];

fn env_name(flag: &str) -> String {
    format!("FLANNELD_{}", flag.replace('-', "_").to_ascii_uppercase())
}

/// Parses `args` (without argv[0]) with `env` as the fallback source.
pub fn parse<I, E>(args: I, env: E) -> Result<Parsed, FlagsError>
where
    I: IntoIterator<Item = String>,
    E: Fn(&str) -> Option<String>,
{
    parse_args(args, env).map_err(FlagsError)
}

fn parse_args<I, E>(args: I, env: E) -> Result<Parsed, String>
where
    I: IntoIterator<Item = String>,
    E: Fn(&str) -> Option<String>,
{
    let mut given: Vec<(String, String)> = Vec::new();
    let mut it = args.into_iter().peekable();
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
            // glog's `-v N`, `-v=N`; a bare `-v` (not followed by a number) means 1.
            None if name == "v" => match it.next_if(|n| n.parse::<u32>().is_ok()) {
                Some(n) => n,
                None => "1".into(),
            },
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
    let iptables_resync = match one("iptables-resync") {
        None => resync.min(5.0),
        Some(s) => match s.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => v,
            _ => {
                return Err(format!(
                    "--iptables-resync={s}: must be a positive number of seconds"
                ))
            }
        },
    };
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
    let public_ipv6 = match one("public-ipv6") {
        None => None,
        Some(s) => Some(
            s.parse()
                .map_err(|_| format!("--public-ipv6: {s:?} is not an IPv6 address"))?,
        ),
    };
    let iface_regex = all("iface-regex")
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| {
            regex::Regex::new(r)
                .map_err(|e| format!("--iface-regex: {r:?} is not a valid regular expression: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let iface_can_reach = match one("iface-can-reach") {
        None => None,
        Some(s) => Some(
            s.parse()
                .map_err(|_| format!("--iface-can-reach: {s:?} is not an IP address"))?,
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
    let log_level = match one("log-level") {
        Some(l) => l.parse().map_err(|e| format!("--log-level: {e}"))?,
        None => LogLevel::from_verbosity(num("v", one("v"), 0)?),
    };
    let log_format = match one("log-format") {
        Some(f) => f.parse().map_err(|e| format!("--log-format: {e}"))?,
        None => LogFormat::Text,
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
    // downward API's spec.nodeName), as it does to flanneld, or as POD_NAME/POD_NAMESPACE.
    let node = node_name::choose(one("node-name"), kube.is_some(), &env, hostname)?;
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
        iface_regex,
        iface_can_reach,
        public_ip,
        public_ipv6,
        ip_blackhole_route: boolean("ip-blackhole-route")?,
        ip_masq: boolean("ip-masq")?,
        rules_backend,
        iptables_forward_rules: boolean_or("iptables-forward-rules", true)?,
        ip_masq_fully_random_disable: boolean("ip-masq-fully-random-disable")?,
        iptables_resync: Duration::from_secs_f64(iptables_resync),
        subnet_file: PathBuf::from(
            one("subnet-file").unwrap_or_else(|| "/run/flannel/subnet.env".into()),
        ),
        renew_margin: Duration::from_secs(renew_minutes * 60),
        lease_ttl: Duration::from_secs(ttl),
        healthz_ip,
        healthz_port: num("healthz-port", one("healthz-port"), 0)?,
        node,
        resync: Duration::from_secs_f64(resync),
        resync_full_every,
        log_level,
        log_format,
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
        match parse_args(args.iter().map(|s| s.to_string()), |k| {
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
        assert!(o.iptables_forward_rules && !o.ip_masq_fully_random_disable);
        assert_eq!(o.iptables_resync, Duration::from_millis(1500));
        let o = run(
            &[
                "--node-name=n",
                "--iptables-forward-rules=false",
                "--ip-masq-fully-random-disable",
                "--iptables-resync=2",
            ],
            &[],
        )
        .unwrap();
        assert!(!o.iptables_forward_rules && o.ip_masq_fully_random_disable);
        assert_eq!(o.iptables_resync, Duration::from_secs(2));
        assert_eq!(
            run(&["--node-name=n"], &[]).unwrap().iptables_resync,
            Duration::from_secs(5)
        );
        assert!(run(&["--node-name=n", "--iptables-resync=0"], &[]).is_err());
        let o = run(&["--node-name=n", "--resync-full-every=1"], &[]).unwrap();
        assert_eq!(o.resync_full_every, 1);
        assert!(run(&["--node-name=n", "--resync-full-every=0"], &[]).is_err());
        let e = run(&["--node-name=n", "--ip-masq=maybe"], &[]).unwrap_err();
        assert!(e.contains("not a boolean"), "{e}");
        assert!(run(&["--bogus"], &[]).unwrap_err().contains("unknown flag"));
        let o = run(&["--node-name=n", "--public-ipv6=fd00::1"], &[]).unwrap();
        assert_eq!(o.public_ipv6, Some("fd00::1".parse().unwrap()));
        let e = run(&["--node-name=n", "--public-ipv6=10.0.0.1"], &[]).unwrap_err();
        assert!(e.contains("not an IPv6 address"), "{e}");
        assert!(run(&["--node-name=n", "--subnet-lease-renew-margin=1440"], &[]).is_err());
        let o = run(
            &[],
            &[
                ("FLANNELD_NODE_NAME", "envnode"),
                ("FLANNELD_IP_MASQ", "true"),
            ],
        )
        .unwrap();
        assert_eq!(o.node.known(), Some("envnode"));
        assert!(o.ip_masq);
    }

    #[test]
    fn verbosity_log_level_and_format_flags() {
        use tracing::level_filters::LevelFilter;
        let o = run(&["--node-name=n"], &[]).unwrap();
        assert_eq!(o.log_level.0, LevelFilter::INFO);
        assert_eq!(o.log_format, LogFormat::Text);
        assert_eq!(
            run(&["-v", "--node-name=n"], &[]).unwrap().log_level.0,
            LevelFilter::DEBUG
        );
        assert_eq!(
            run(&["-v", "6", "--node-name=n"], &[]).unwrap().log_level.0,
            LevelFilter::TRACE
        );
        assert_eq!(
            run(&["--v=2", "--node-name=n"], &[]).unwrap().log_level.0,
            LevelFilter::DEBUG
        );
        let o = run(
            &[
                "--v=5",
                "--log-level=warn",
                "--log-format=json",
                "--node-name=n",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(o.log_level.0, LevelFilter::WARN);
        assert_eq!(o.log_format, LogFormat::Json);
        assert!(run(&["--log-level=loud", "--node-name=n"], &[]).is_err());
        assert!(run(&["--log-format=xml", "--node-name=n"], &[]).is_err());
        assert!(run(&["--v=x", "--node-name=n"], &[]).is_err());
    }

    #[test]
    fn underlay_choice_flags_are_checked_before_anything_runs() {
        let o = run(
            &[
                "--node-name=n",
                "--iface-regex=^10\\.250\\.",
                "--iface-regex",
                "eth[0-9]{1,2}",
                "--iface-can-reach=10.250.0.254",
                "--ip-blackhole-route",
            ],
            &[],
        )
        .unwrap();
        let patterns: Vec<&str> = o.iface_regex.iter().map(|r| r.as_str()).collect();
        assert_eq!(patterns, vec!["^10\\.250\\.", "eth[0-9]{1,2}"]);
        assert_eq!(o.iface_can_reach, Some("10.250.0.254".parse().unwrap()));
        assert!(o.ip_blackhole_route);
        let e = run(&["--node-name=n", "--iface-regex=eth(0"], &[]).unwrap_err();
        assert!(e.contains("--iface-regex") && e.contains("eth(0"), "{e}");
        let e = run(&["--node-name=n", "--iface-can-reach=nowhere"], &[]).unwrap_err();
        assert!(e.contains("--iface-can-reach"), "{e}");
        let o = run(&["--node-name=n"], &[("FLANNELD_IFACE_REGEX", "a,b{1,2}")]).unwrap();
        assert_eq!(o.iface_regex.len(), 1, "a regex is not split on commas");
        assert!(!o.ip_blackhole_route);
    }

    #[test]
    fn kube_mode_flags_have_flanneld_defaults_and_node_name_from_env() {
        let o = run(&["--node-name=n"], &[("NODE_NAME", "ignored")]).unwrap();
        assert_eq!(o.kube, None);
        assert_eq!(o.node.known(), Some("n"));
        let o = run(&["--kube-subnet-mgr"], &[("NODE_NAME", "worker-1")]).unwrap();
        assert_eq!(o.node.known(), Some("worker-1"));
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
        assert_eq!(o.node.known(), Some("a"));
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
        assert_eq!(o.node.known(), Some("c"));
        assert!(o.kube.is_some());
        let o = run(
            &["--kube-subnet-mgr"],
            &[("POD_NAME", "twill-x"), ("POD_NAMESPACE", "kube-twill")],
        )
        .unwrap();
        assert_eq!(
            o.node,
            NodeName::Pod {
                namespace: "kube-twill".into(),
                name: "twill-x".into()
            }
        );
        let e = run(&["--kube-subnet-mgr"], &[("POD_NAME", "twill-x")]).unwrap_err();
        assert!(e.contains("POD_NAMESPACE is not"), "{e}");
    }
}
