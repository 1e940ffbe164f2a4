//! Log output for every hsmgate process: human-readable lines by default, or one JSON object
//! per line (`HSMGATE_LOG_FORMAT=json`) for a log shipper — journald, Loki, an ELK pipeline —
//! that should not parse prose. Either way logs go to stderr (journald under systemd) and
//! `RUST_LOG` filters them.
//!
//! The format is chosen by environment rather than by a flag so that one line in a systemd
//! unit (`Environment=HSMGATE_LOG_FORMAT=json`) switches every binary, subcommands included.
//! An unknown value is an error, not a silent fallback: a shipper expecting JSON would
//! otherwise drop every line.

use tracing_subscriber::EnvFilter;

/// The environment variable that selects the format: `text` (default) or `json`.
pub const LOG_FORMAT_ENV: &str = "HSMGATE_LOG_FORMAT";

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// `tracing_subscriber`'s compact human format.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (the message and
    /// the event's fields), and the enclosing spans.
    Json,
}

impl LogFormat {
    /// The format `value` names (`text` or `json`, any case); `None` for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "text" => Some(Self::Text),
            "json" => Some(Self::Json),
            _ => None,
        }
    }

    /// The format `HSMGATE_LOG_FORMAT` asks for; unset means text.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(LOG_FORMAT_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(Self::Text),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(format!("{LOG_FORMAT_ENV}: not UTF-8 (text or json)"))
            }
            Ok(v) => Self::parse(&v).ok_or_else(|| format!("{LOG_FORMAT_ENV}=`{v}`: text or json")),
        }
    }
}

/// Installs the process's log subscriber: `RUST_LOG` if set, else `default_filter`
/// (`info`, or `info,cryptoki=off`), in the format of `HSMGATE_LOG_FORMAT`. On an unknown
/// format it says so on stderr and exits with status 2, before anything else runs.
pub fn init(default_filter: &str) {
    let format = match LogFormat::from_env() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // Spans flattened into the event's object (`span`, `spans`) and the message among the
        // fields, as most shippers index them.
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::LogFormat;

    #[test]
    fn formats_parse_and_unknown_ones_are_refused() {
        assert_eq!(LogFormat::parse("json"), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse(" JSON "), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("text"), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse(""), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse("jsonl"), None);
        assert_eq!(LogFormat::parse("logfmt"), None);
    }
}
