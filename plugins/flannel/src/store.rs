//! The saved delegate configs in `dataDir`: one file per attachment, written before the delegate's ADD runs,
//! so DEL can run the delegate with exactly the config ADD used even when `subnet.env` is gone or the node's
//! subnet changed (docs/architecture.md, flannel contracts, the flannel CNI plugin). The reference keys the file by
//! container id alone, so two interfaces of one container overwrite each other's; ours is `<containerID>:<ifname>`
//! (neither may contain `:`, so the name splits back unambiguously for GC). A file named by the container id alone is
//! the reference's and is still honoured by DEL, so a node can switch plugins without stranding addresses.

use serde_json::{Map, Value};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use twill_cni::{ContainerId, Context, Error, IfName, Result};
use twill_files::{create_missing_dirs, write_atomically};

const SEPARATOR: char = ':';

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// One saved file found by [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub container_id: String,
    /// `None` for a file the reference plugin wrote (keyed by container id only).
    pub ifname: Option<String>,
    pub path: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    pub fn path(&self, id: &ContainerId, ifname: &IfName) -> PathBuf {
        self.dir.join(format!("{id}{SEPARATOR}{ifname}"))
    }

    fn legacy_path(&self, id: &ContainerId) -> PathBuf {
        self.dir.join(id.as_str())
    }

    /// Writes the attachment's delegate config atomically and durably (mode 0600, in a directory created
    /// 0700 if missing: the configs may carry secrets from runtimeConfig), so a crash leaves either the old
    /// file or the new one, never a torn one, and a planted link is never written through.
    pub fn save(
        &self,
        id: &ContainerId,
        ifname: &IfName,
        config: &Map<String, Value>,
    ) -> Result<PathBuf> {
        let bytes = serde_json::to_vec(config).context("serialise delegate config")?;
        create_missing_dirs(&self.dir, 0o700)
            .with_context(|| format!("create data directory {}", self.dir.display()))?;
        let path = self.path(id, ifname);
        write_atomically(&path, &bytes, 0o600).context("save delegate config")?;
        Ok(path)
    }

    /// The saved config of an attachment: ours, else the reference's file for the container, else `None`.
    pub fn load(
        &self,
        id: &ContainerId,
        ifname: &IfName,
    ) -> Result<Option<(PathBuf, Map<String, Value>)>> {
        for path in [self.path(id, ifname), self.legacy_path(id)] {
            if let Some(conf) = read_config(&path)? {
                return Ok(Some((path, conf)));
            }
        }
        Ok(None)
    }

    /// Removes a saved file; one that is already gone is fine (DEL is idempotent).
    pub fn remove(&self, path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::failed(format!("remove {}: {e}", path.display()))),
        }
    }

    /// Every saved file (temporary files of ADDs in progress excluded); an absent directory is empty.
    pub fn list(&self) -> Result<Vec<Saved>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::failed(format!("list {}: {e}", self.dir.display()))),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("list {}", self.dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let (container_id, ifname) = match name.split_once(SEPARATOR) {
                Some((id, ifname)) => (id.to_string(), Some(ifname.to_string())),
                None => (name.clone(), None),
            };
            if ContainerId::parse(&container_id).is_err() {
                continue;
            }
            out.push(Saved {
                container_id,
                ifname,
                path: entry.path(),
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

/// Reads a saved config; `None` when the file does not exist. A file that is not a JSON object is an error
/// naming it: running the delegate with a guessed config could release the wrong thing.
pub fn read_config(path: &Path) -> Result<Option<Map<String, Value>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == ErrorKind::IsADirectory => return Ok(None),
        Err(e) => {
            return Err(Error::failed(format!(
                "read saved delegate config {}: {e}",
                path.display()
            )))
        }
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(Error::failed(format!(
            "saved delegate config {} is not a JSON object",
            path.display()
        ))),
        Err(e) => Err(Error::failed(format!(
            "saved delegate config {} is corrupt: {e}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::MetadataExt;

    fn ids(id: &str, ifname: &str) -> (ContainerId, IfName) {
        (
            ContainerId::parse(id).unwrap(),
            IfName::parse(ifname).unwrap(),
        )
    }

    #[test]
    fn saves_atomically_with_private_modes_and_loads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("flannel"));
        let (id, ifname) = ids("c-1.2", "eth0");
        let conf = json!({"name": "cbr0", "type": "bridge"});
        let path = store.save(&id, &ifname, conf.as_object().unwrap()).unwrap();
        assert_eq!(path, tmp.path().join("flannel/c-1.2:eth0"));
        assert_eq!(
            std::fs::metadata(tmp.path().join("flannel"))
                .unwrap()
                .mode()
                & 0o777,
            0o700
        );
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let (p, loaded) = store.load(&id, &ifname).unwrap().unwrap();
        assert_eq!((p, Value::Object(loaded)), (path.clone(), conf));
        let names: Vec<_> = std::fs::read_dir(tmp.path().join("flannel"))
            .unwrap()
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
        store.remove(&path).unwrap();
        store.remove(&path).unwrap();
        assert!(store.load(&id, &ifname).unwrap().is_none());
    }

    #[test]
    fn two_interfaces_of_one_container_do_not_collide() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        let (id, eth0) = ids("c1", "eth0");
        let net1 = IfName::parse("net1.x-y").unwrap();
        store
            .save(&id, &eth0, json!({"n": 0}).as_object().unwrap())
            .unwrap();
        store
            .save(&id, &net1, json!({"n": 1}).as_object().unwrap())
            .unwrap();
        assert_eq!(store.load(&id, &eth0).unwrap().unwrap().1["n"], 0);
        assert_eq!(store.load(&id, &net1).unwrap().unwrap().1["n"], 1);
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|s| s.container_id == "c1"));
        assert_eq!(listed[1].ifname.as_deref(), Some("net1.x-y"));
    }

    #[test]
    fn reference_files_are_found_by_container_id() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        std::fs::write(tmp.path().join("abc"), r#"{"name":"cbr0"}"#).unwrap();
        std::fs::write(tmp.path().join(".abc:eth0.1.tmp"), "{").unwrap();
        let (id, ifname) = ids("abc", "eth0");
        let (path, conf) = store.load(&id, &ifname).unwrap().unwrap();
        assert_eq!(path, tmp.path().join("abc"));
        assert_eq!(conf["name"], "cbr0");
        assert_eq!(
            store.list().unwrap(),
            vec![Saved {
                container_id: "abc".into(),
                ifname: None,
                path: tmp.path().join("abc")
            }]
        );
    }

    #[test]
    fn save_never_writes_through_planted_links() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let dir = tmp.path().join("flannel");
        std::fs::create_dir(&dir).unwrap();
        let store = Store::new(&dir);
        let (id, ifname) = ids("c", "eth0");
        let pid = std::process::id();
        std::os::unix::fs::symlink(&victim, dir.join(format!(".c:eth0.{pid}.tmp"))).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("c:eth0")).unwrap();
        let path = store
            .save(&id, &ifname, json!({"n": 1}).as_object().unwrap())
            .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(store.load(&id, &ifname).unwrap().unwrap().1["n"], 1);
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        std::fs::write(tmp.path().join("c:eth0"), "{not json").unwrap();
        let (id, ifname) = ids("c", "eth0");
        let e = store.load(&id, &ifname).unwrap_err();
        assert!(e.msg.contains("c:eth0"), "{}", e.msg);
    }
}
