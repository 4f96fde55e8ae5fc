//! `ipam.resolvConf`: a resolv.conf turned into the result's `dns`, parsed as the reference does
//! (docs/cni-spec-notes.md §11.1): `nameserver` (one per line), `domain`, `search` and `options` (every word), lines
//! starting with `#` or `;` skipped, lines with fewer than two words ignored.

use std::path::Path;
use twill_cni::{Context, Dns, Result};

pub fn parse(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 2 {
            continue;
        }
        let rest = fields[1..].iter().map(|s| s.to_string());
        match fields[0] {
            "nameserver" => dns.nameservers.push(fields[1].to_string()),
            "domain" => dns.domain = Some(fields[1].to_string()),
            "search" => dns.search.extend(rest),
            "options" => dns.options.extend(rest),
            _ => {}
        }
    }
    dns
}

pub fn load(path: &Path) -> Result<Dns> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("ipam.resolvConf: read {}", path.display()))?;
    Ok(parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_the_reference() {
        let dns = parse(
            "# comment\n; other\nnameserver 10.0.0.10\nnameserver fd00::10 extra\n\
             domain example.com\nsearch a.example b.example\noptions ndots:5 rotate\nbogus\nsortlist x\n",
        );
        assert_eq!(dns.nameservers, ["10.0.0.10", "fd00::10"]);
        assert_eq!(dns.domain.as_deref(), Some("example.com"));
        assert_eq!(dns.search, ["a.example", "b.example"]);
        assert_eq!(dns.options, ["ndots:5", "rotate"]);
    }
}
