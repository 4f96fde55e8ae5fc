//! Leveled, structured logs on stderr through `tracing`: text lines (time, level, module, message and fields)
//! or one JSON object per line (`--log-format=json`) with `timestamp`, `level`, `target`, `message` and the
//! event's fields at the top level.
//!
//! The level comes from `--log-level` or, flanneld-style, from the glog verbosity `-v`/`--v=N`: 0 (default)
//! shows info and above, 1–4 debug, 5 and more trace.

use std::fmt;
use std::str::FromStr;

use tracing::level_filters::LevelFilter;

/// How each log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?} is neither text nor json")),
        }
    }
}

/// The most verbose level shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLevel(pub LevelFilter);

impl LogLevel {
    /// glog's `-v=N`: 0 is info, 1 to 4 debug, 5 and above trace.
    pub fn from_verbosity(v: u32) -> LogLevel {
        LogLevel(match v {
            0 => LevelFilter::INFO,
            1..=4 => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        })
    }
}

impl Default for LogLevel {
    fn default() -> Self {
        LogLevel(LevelFilter::INFO)
    }
}

impl FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let f = match s.to_ascii_lowercase().as_str() {
            "error" => LevelFilter::ERROR,
            "warn" | "warning" => LevelFilter::WARN,
            "info" => LevelFilter::INFO,
            "debug" => LevelFilter::DEBUG,
            "trace" => LevelFilter::TRACE,
            _ => {
                return Err(format!(
                    "{s:?} is not one of error, warn, info, debug, trace"
                ))
            }
        };
        Ok(LogLevel(f))
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Installs the process-wide subscriber. A second call (tests) keeps the first one.
pub fn init(level: LogLevel, format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(level.0);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_formats_parse_as_documented() {
        assert_eq!("warn".parse::<LogLevel>().unwrap().0, LevelFilter::WARN);
        assert_eq!("TRACE".parse::<LogLevel>().unwrap().0, LevelFilter::TRACE);
        assert!("loud".parse::<LogLevel>().is_err());
        assert_eq!(LogLevel::from_verbosity(0).0, LevelFilter::INFO);
        assert_eq!(LogLevel::from_verbosity(2).0, LevelFilter::DEBUG);
        assert_eq!(LogLevel::from_verbosity(6).0, LevelFilter::TRACE);
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
