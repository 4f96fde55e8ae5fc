//! `dhcp daemon`'s flags, spelled as the reference's Go `flag` package accepts them: `-name value`,
//! `-name=value`, `--name`, booleans alone or `=true|false`, durations in Go syntax (`10s`, `1m30s`, `500ms`).

use crate::config::DEFAULT_SOCKET_PATH;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonFlags {
    pub pidfile: Option<PathBuf>,
    /// Prefix of the host's root as this process sees it (a daemon in a container with the host's `/`
    /// mounted at `/host`): applied to the socket path and to each pod's netns path.
    pub host_prefix: String,
    pub socket_path: PathBuf,
    /// Accepted for compatibility: twill always asks servers to broadcast their replies (see lease.rs).
    pub broadcast: bool,
    /// How long one DHCP exchange waits for the server's reply.
    pub timeout: Duration,
    /// Longest delay between retries of a failed exchange.
    pub resend_max: Duration,
    /// No more retries after this long.
    pub resend_timeout: Duration,
}

impl Default for DaemonFlags {
    fn default() -> Self {
        DaemonFlags {
            pidfile: None,
            host_prefix: String::new(),
            socket_path: PathBuf::from(DEFAULT_SOCKET_PATH),
            broadcast: false,
            timeout: Duration::from_secs(10),
            resend_max: Duration::from_secs(62),
            resend_timeout: Duration::from_secs(208),
        }
    }
}

pub const USAGE: &str =
    "usage: dhcp daemon [-socketpath PATH] [-hostprefix PREFIX] [-pidfile PATH] \
[-broadcast] [-timeout DURATION] [-resendmax DURATION] [-resendtimeout DURATION]";

/// A Go duration: a sequence of decimal numbers with units ns, us, µs, ms, s, m, h (e.g. `1h2m0.5s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// Parses the arguments after `daemon`.
pub fn parse(args: &[String]) -> Result<DaemonFlags, String> {
    let mut flags = DaemonFlags::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(name) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(format!("unexpected argument {arg:?}\n{USAGE}"));
        };
        let (name, inline) = match name.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (name, None),
        };
        if name == "broadcast" {
            flags.broadcast = match inline.as_deref() {
                None | Some("true" | "1" | "t" | "T" | "TRUE" | "True") => true,
                Some("false" | "0" | "f" | "F" | "FALSE" | "False") => false,
                Some(v) => return Err(format!("invalid boolean value {v:?} for -broadcast")),
            };
            continue;
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("flag needs an argument: -{name}\n{USAGE}"))
        };
        match name {
            "pidfile" => {
                flags.pidfile = Some(PathBuf::from(value()?)).filter(|p| !p.as_os_str().is_empty())
            }
            "hostprefix" => flags.host_prefix = value()?,
            "socketpath" => {
                let v = value()?;
                flags.socket_path = if v.is_empty() {
                    PathBuf::from(DEFAULT_SOCKET_PATH)
                } else {
                    PathBuf::from(v)
                };
            }
            "timeout" => flags.timeout = parse_duration(&value()?)?,
            "resendmax" => flags.resend_max = parse_duration(&value()?)?,
            "resendtimeout" => flags.resend_timeout = parse_duration(&value()?)?,
            "h" | "help" => return Err(USAGE.to_string()),
            other => return Err(format!("flag provided but not defined: -{other}\n{USAGE}")),
        }
    }
    if let Some(p) = &flags.pidfile {
        if !p.is_absolute() {
            return Err(format!(
                "Error writing pidfile {:?}: path not absolute",
                p.display().to_string()
            ));
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn flags_in_every_spelling() {
        let f = parse(&args(
            "-socketpath /tmp/d.sock --timeout=2s -broadcast -resendmax 4s",
        ))
        .unwrap();
        assert_eq!(f.socket_path, PathBuf::from("/tmp/d.sock"));
        assert_eq!(f.timeout, Duration::from_secs(2));
        assert_eq!(f.resend_max, Duration::from_secs(4));
        assert!(f.broadcast);
        assert_eq!(parse(&[]).unwrap(), DaemonFlags::default());
        assert!(parse(&args("-nope")).is_err());
        assert!(parse(&args("-timeout")).is_err());
        assert!(parse(&args("-pidfile rel.pid")).is_err());
    }
}
