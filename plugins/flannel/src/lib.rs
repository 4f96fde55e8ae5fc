//! The `flannel` CNI meta plugin (docs/architecture.md, flannel contracts, the flannel CNI plugin): turns the node's
//! `subnet.env` into a `bridge` + `host-local` delegate config, saves it per attachment, and runs the delegate.
//!
//! Differences from the reference plugin, each fixing a known failure:
//! - the saved config is keyed by container id **and** interface name, so two interfaces of one container
//!   do not overwrite each other's;
//! - DEL removes the saved config only after the delegate's DEL succeeded, so a failed DEL is retried with
//!   the same config instead of leaking the address;
//! - a missing or incomplete `subnet.env` is code 11 (try again) naming the file and the keys;
//! - CHECK, STATUS and GC are implemented (the reference has none of them);
//! - a node whose subnet changed under an existing bridge gets an error that says so and what to do.

pub mod config;
pub mod render;
pub mod store;
pub mod subnet_change;
pub mod subnet_env;

use config::FlannelConf;
use serde_json::{Map, Value};
use store::Store;
use subnet_change::ExpectedGateways;
use twill_cni::delegate;
use twill_cni::lock::AttachmentLock;
use twill_cni::{CniResult, Command, Error, Plugin, Request, Result, Undo};

#[derive(Debug, Default)]
pub struct Flannel;

/// ADD and DEL of one attachment never overlap (a saved config removed by a DEL while an ADD runs the
/// delegate would strand what that ADD creates).
fn lock_attachment(req: &Request) -> Result<AttachmentLock> {
    AttachmentLock::of(req)
}

impl Plugin for Flannel {
    /// Never itself: the namespace is its delegate's business (the bridge checks it on ADD and CHECK).
    fn enters_netns(&self, _command: Command) -> bool {
        false
    }

    fn add(&self, req: &Request) -> Result<CniResult> {
        // Held across the delegate, which is told so and does not wait for it (see twill_cni::lock).
        let _lock = lock_attachment(req)?;
        let conf = FlannelConf::from_netconf(&req.config)?;
        let env = subnet_env::load(&conf.subnet_file)?;
        let delegate_conf = render::delegate_config(&conf, &env);
        let (id, ifname) = (req.container_id()?, req.ifname()?);
        let expected = ExpectedGateways::of(&delegate_conf, &env);
        if let Some(expected) = &expected {
            subnet_change::check(expected, &conf.subnet_file)?;
        }
        let plugin = conf.delegate_type();
        let stdin = to_stdin(&delegate_conf)?;

        // Saved before the delegate runs: if we die half way, DEL still finds what to undo.
        let store = Store::new(&conf.data_dir);
        let saved = store.save(id, ifname, &delegate_conf)?;
        let mut undo = Undo::new();
        undo.push(format!("delegate {plugin} DEL"), || {
            delegate::run(plugin, Command::Del, &stdin, &req.env)?;
            // Only once the delegate released everything; otherwise the runtime's DEL needs the file.
            store.remove(&saved)
        });
        let result = delegate::add(plugin, &stdin, &req.env, req.version())
            .map_err(|e| explain_add_failure(e, expected.as_ref(), &conf))?;
        undo.commit();
        Ok(result)
    }

    fn del(&self, req: &Request) -> Result<()> {
        let _lock = lock_attachment(req)?;
        let store = Store::new(config::data_dir(&req.config)?);
        let (id, ifname) = (req.container_id()?, req.ifname()?);
        // Nothing saved: ADD never got as far as the delegate, or DEL already succeeded (spec: DEL is
        // idempotent).
        let Some((path, mut saved)) = store.load(id, ifname)? else {
            return Ok(());
        };
        // The chain's cached result, when it is in the version the delegate was configured with.
        if let Some(prev) = req.config.get("prevResult") {
            if saved.get("cniVersion") == req.config.raw.get("cniVersion") {
                saved.insert("prevResult".into(), prev.clone());
            }
        }
        let plugin = saved_type(&saved, &path)?;
        delegate::run(&plugin, Command::Del, &to_stdin(&saved)?, &req.env)
            .map_err(|e| e.context(format!("delegate {plugin} DEL (config {})", path.display())))?;
        store.remove(&path)
    }

    fn check(&self, req: &Request) -> Result<()> {
        let conf = FlannelConf::from_netconf(&req.config)?;
        let store = Store::new(&conf.data_dir);
        let (id, ifname) = (req.container_id()?, req.ifname()?);
        let (path, mut saved) = store.load(id, ifname)?.ok_or_else(|| {
            Error::failed(format!(
                "no saved delegate config for container {id} interface {ifname} in {}: \
                 the attachment was not added by this plugin",
                conf.data_dir.display()
            ))
        })?;
        // A pod on the old subnet is no longer reachable from other nodes once the node's subnet changed.
        // A missing subnet.env only means the daemon is down, which does not break existing pods.
        if let Ok(env) = subnet_env::load(&conf.subnet_file) {
            let now = render::delegate_config(&conf, &env);
            let ranges =
                |c: &Map<String, Value>| c.get("ipam").and_then(|i| i.get("ranges")).cloned();
            if ranges(&now) != ranges(&saved) {
                return Err(Error::failed(format!(
                    "the node's subnet changed since this pod was added: it was given an address from \
                     {} but {} now assigns {}; recreate the pod",
                    ranges(&saved).unwrap_or_default(),
                    conf.subnet_file.display(),
                    ranges(&now).unwrap_or_default()
                )));
            }
        }
        // CHECK needs prevResult, which is in the request's version, so the delegate gets that version.
        if let Some(v) = req.config.raw.get("cniVersion") {
            saved.insert("cniVersion".into(), v.clone());
        }
        match req.config.get("prevResult") {
            Some(prev) => saved.insert("prevResult".into(), prev.clone()),
            None => saved.remove("prevResult"),
        };
        let plugin = saved_type(&saved, &path)?;
        delegate::run(&plugin, Command::Check, &to_stdin(&saved)?, &req.env)
    }

    /// Not ready while the daemon has not written (a valid) `subnet.env`; then whatever the delegate says.
    fn status(&self, req: &Request) -> Result<()> {
        let conf = FlannelConf::from_netconf(&req.config)?;
        let env = subnet_env::load(&conf.subnet_file).map_err(|e| Error::not_available(e.msg))?;
        let delegate_conf = render::delegate_config(&conf, &env);
        delegate::run(
            conf.delegate_type(),
            Command::Status,
            &to_stdin(&delegate_conf)?,
            &req.env,
        )
    }

    /// Forwards GC to the delegate (so the bridge drops masquerade rules and host-local leases of gone
    /// attachments), then drops our saved configs of attachments outside the valid list. Saved configs are
    /// kept if the delegate's GC failed: they are what a later DEL needs.
    fn gc(&self, req: &Request) -> Result<()> {
        let conf = FlannelConf::from_netconf(&req.config)?;
        let valid = req.config.valid_attachments()?;
        let store = Store::new(&conf.data_dir);
        let ours: Vec<(store::Saved, Map<String, Value>)> = store
            .list()?
            .into_iter()
            .filter_map(|s| match store::read_config(&s.path) {
                Ok(Some(c)) => Some((s, c)),
                Ok(None) => None,
                Err(e) => {
                    eprintln!("flannel GC: skipping {}: {e}", s.path.display());
                    None
                }
            })
            // dataDir may be shared by several flannel networks; the GC request is about this one.
            .filter(|(_, c)| c.get("name").and_then(Value::as_str) == Some(conf.name.as_str()))
            .collect();

        // The delegate needs a config even while the daemon is down: any saved one will do.
        let base = match subnet_env::load(&conf.subnet_file) {
            Ok(env) => Some(render::delegate_config(&conf, &env)),
            Err(_) => ours.first().map(|(_, c)| c.clone()),
        };
        if let Some(mut d) = base {
            // GC carries neither (docs/cni-spec-notes.md §3.2); a saved config may hold ADD's runtimeConfig.
            d.remove("prevResult");
            d.remove("runtimeConfig");
            for key in [
                "cniVersion",
                "cni.dev/valid-attachments",
                "cni.dev/attachments",
            ] {
                match req.config.raw.get(key) {
                    Some(v) => d.insert(key.into(), v.clone()),
                    None => d.remove(key),
                };
            }
            let plugin = d
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or(conf.delegate_type())
                .to_string();
            delegate::run(&plugin, Command::Gc, &to_stdin(&d)?, &req.env)?;
        }

        // An absent list is not an empty one: without it nothing may be released.
        let Some(valid) = valid else { return Ok(()) };
        // GC continues past errors and reports them together (docs/cni-spec-notes.md §4 GC).
        let mut failures = Vec::new();
        for (saved, _) in &ours {
            let keep = valid.iter().any(|a| {
                a.container_id == saved.container_id && saved.ifname.iter().all(|i| *i == a.ifname)
            });
            if !keep {
                if let Err(e) = store.remove(&saved.path) {
                    failures.push(e.msg);
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::failed(failures.join("; ")))
        }
    }
}

fn to_stdin(conf: &Map<String, Value>) -> Result<Vec<u8>> {
    serde_json::to_vec(conf).map_err(|e| Error::failed(format!("serialise delegate config: {e}")))
}

/// The delegate type recorded in a saved config.
fn saved_type(saved: &Map<String, Value>, path: &std::path::Path) -> Result<String> {
    saved
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            Error::failed(format!(
                "saved delegate config {} has no type",
                path.display()
            ))
        })
}

/// The delegate bridge's "already has an IP address different from" means the same thing as what
/// [`subnet_change::check`] looks for; look again to name the old address, else keep the delegate's words.
fn explain_add_failure(e: Error, expected: Option<&ExpectedGateways>, conf: &FlannelConf) -> Error {
    if !subnet_change::is_delegate_conflict(&e) {
        return e;
    }
    if let Some(expected) = expected {
        if let Err(explained) = subnet_change::check(expected, &conf.subnet_file) {
            return explained;
        }
    }
    Error::new(
        e.code,
        format!(
            "the node's subnet probably changed: the bridge still has a gateway address that is not from \
             the subnet in {}; delete the pods on the old subnet, then the bridge, and retry",
            conf.subnet_file.display()
        ),
        e.to_string(),
    )
}
