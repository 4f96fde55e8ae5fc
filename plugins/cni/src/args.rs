//! `CNI_ARGS` (`K1=V1;K2=V2`), parsed as the reference `types.LoadArgs` does (docs/cni-spec-notes.md §2): each pair has
//! exactly one `=`, and keys a plugin does not know are an error unless `IgnoreUnknown` is true — Kubernetes runtimes
//! always send `IgnoreUnknown=1` with their `K8S_POD_*` keys.

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
}

impl CniArgs {
    pub fn parse(s: &str) -> Result<Self> {
        let mut pairs = Vec::new();
        for item in s.split(';').filter(|i| !i.is_empty()) {
            let mut kv = item.split('=');
            match (kv.next(), kv.next(), kv.next()) {
                (Some(k), Some(v), None) if !k.is_empty() => {
                    pairs.push((k.to_string(), v.to_string()))
                }
                _ => {
                    return Err(Error::invalid_env(format!(
                        "CNI_ARGS: invalid pair {item:?}"
                    )));
                }
            }
        }
        Ok(CniArgs { pairs })
    }

    /// The value of `key`. A key given twice takes its last value, as the reference's `LoadArgs` assigns
    /// each pair in order to the same field.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn ignore_unknown(&self) -> bool {
        matches!(self.get("IgnoreUnknown"), Some("1" | "true" | "True"))
    }

    /// Fail on keys outside `known` unless `IgnoreUnknown` is set, naming the first unknown key.
    pub fn check_known(&self, known: &[&str]) -> Result<()> {
        if self.ignore_unknown() {
            return Ok(());
        }
        match self
            .pairs
            .iter()
            .find(|(k, _)| k != "IgnoreUnknown" && !known.contains(&k.as_str()))
        {
            Some((k, _)) => Err(Error::invalid_env(format!(
                "CNI_ARGS: unknown args [\"{k}\"]"
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_args_are_accepted_with_ignore_unknown() {
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;IP=10.0.0.5")
            .unwrap();
        assert_eq!(a.get("IP"), Some("10.0.0.5"));
        assert!(a.check_known(&["IP"]).is_ok());
    }

    #[test]
    fn unknown_keys_fail_without_ignore_unknown() {
        let a = CniArgs::parse("K8S_POD_NAME=p").unwrap();
        assert_eq!(a.check_known(&["IP"]).unwrap_err().code, 4);
    }

    #[test]
    fn a_repeated_key_takes_its_last_value() {
        let a = CniArgs::parse("IP=10.0.0.5;IgnoreUnknown=0;IP=10.0.0.6;IgnoreUnknown=1").unwrap();
        assert_eq!(a.get("IP"), Some("10.0.0.6"));
        assert!(a.ignore_unknown());
    }

    #[test]
    fn malformed_pairs_fail() {
        for bad in ["IP", "IP=a=b", "=x"] {
            assert!(CniArgs::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
    }
}
