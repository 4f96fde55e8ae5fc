//! Requests as a runtime sends them, for the plugins' unit tests (cargo feature `testing`).

use crate::{Command, Env, NetConf, Request};

/// A `command` request for container `c1` and interface `eth0` in `/run/netns/x`, with `config` on
/// stdin and `cni_args` as `CNI_ARGS` (empty: unset). Panics when the environment or the config is
/// refused: a test's input is wrong then.
pub fn request(command: Command, config: &str, cni_args: &str) -> Request {
    let env = Env::from_lookup(command, |k| match k {
        "CNI_CONTAINERID" => Some("c1".into()),
        "CNI_NETNS" => Some("/run/netns/x".into()),
        "CNI_IFNAME" => Some("eth0".into()),
        "CNI_ARGS" if !cni_args.is_empty() => Some(cni_args.into()),
        _ => None,
    })
    .expect("test environment");
    Request {
        command,
        env,
        config: NetConf::parse(config.as_bytes()).expect("test config"),
        stdin: config.as_bytes().to_vec(),
    }
}
