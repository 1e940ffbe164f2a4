//! Fuzzes `hsm_config::Config::parse`, the TOML parsing and whole-file validation that every
//! configuration file (and every SIGHUP reload) goes through.
//!
//! The properties:
//! - any input yields `Ok` or an `Error` — never a panic, an abort or unbounded work — and the
//!   error renders (`Display`, `Debug`) without panicking;
//! - an accepted config keeps the promises validation makes (every name resolves, no inline
//!   PIN, `module_env` safe for `set_var`, ...);
//! - an inline PIN is never echoed: when the document is valid TOML and the marker
//!   [`SECRET`] appears only inside the value of a `datacenters[*].hsms[*].pin` (`pin = "…"`,
//!   `pin = ["…"]`, `pin = { file = "x", pin = "…" }`; not as a `file` or `env` name, and
//!   nowhere else: no other value, key or comment), the error must not contain it. The seeds carry
//!   the marker, so the fuzzer moves it around.
//!
//! Bytes that are not UTF-8 are converted lossily (`Config::load` refuses them outright).

#![no_main]

use std::path::{Path, PathBuf};

use hsm_config::{Config, PinSource};
use libfuzzer_sys::fuzz_target;

/// The inline PIN the seeds use.
const SECRET: &str = "hunter2-inline-PIN";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, Path::new("fuzz.toml"), PathBuf::from("/fuzz")) {
        Ok(config) => accepted(&config),
        Err(e) => {
            let shown = e.to_string();
            let debug = format!("{e:?}");
            if only_inline_pins(&text) {
                assert!(!shown.contains(SECRET), "inline PIN echoed: {shown}");
                assert!(!debug.contains(SECRET), "inline PIN in Debug: {debug}");
            }
        }
    }
});

/// What validation promises about a config it lets through.
fn accepted(config: &Config) {
    assert!(
        config
            .datacenters
            .iter()
            .any(|dc| dc.name == config.gateway.local_datacenter)
    );
    assert!(config.gateway.tls.is_some() != config.gateway.insecure_plaintext.is_some());
    if let Some(plain) = &config.gateway.insecure_plaintext {
        assert!(config.gateway.listen.ip().is_loopback());
        assert!(config.client(&plain.client).is_some());
    }
    for (_, hsm) in config.hsms() {
        assert!(
            !matches!(hsm.pin, PinSource::Invalid(_)),
            "inline PIN accepted"
        );
        assert!((1..=1024).contains(&hsm.sessions));
        assert!(hsm.max_in_flight >= hsm.sessions);
        for (k, v) in &hsm.module_env {
            assert!(!k.is_empty() && !k.contains(['=', '\0']) && !v.contains('\0'));
        }
    }
    for key in &config.keys {
        assert!(!key.hsms.is_empty());
        for h in &key.hsms {
            assert!(
                config.hsm(h).is_some(),
                "key {} on unknown HSM {h}",
                key.name
            );
        }
    }
    for client in &config.clients {
        for grant in &client.grants {
            for k in &grant.keys {
                assert!(k == "*" || config.key(k).is_some());
            }
        }
    }
    assert!(config.timeouts.hsm_call_ms < config.timeouts.default_deadline_ms);
}

/// True when the text holds [`SECRET`] and every occurrence is an inline PIN of an HSM
/// `pin` in a valid TOML document: then no error may show it.
fn only_inline_pins(text: &str) -> bool {
    let raw = text.matches(SECRET).count();
    if raw == 0 {
        return false;
    }
    let Ok(doc) = toml::from_str::<toml::Table>(text) else {
        return false;
    };
    let mut at_pins = 0;
    if let Some(toml::Value::Array(dcs)) = doc.get("datacenters") {
        for dc in dcs {
            if let Some(toml::Value::Array(hsms)) = dc.get("hsms") {
                for hsm in hsms {
                    at_pins += hsm.get("pin").map_or(0, inline_in_pin);
                }
            }
        }
    }
    // Decoded occurrences anywhere (keys and strings) must all be those pins, and each must
    // come from the raw text (not an escape sequence spelling it, not a comment).
    let anywhere: usize = doc
        .iter()
        .map(|(k, v)| k.matches(SECRET).count() + count(v))
        .sum();
    at_pins == raw && anywhere == raw
}

/// Occurrences of [`SECRET`] in a `pin` value that are an inline PIN: the value itself, or
/// anything in it but the `file` / `env` of a table (`{ file = "x", pin = "1234" }` is inline).
fn inline_in_pin(pin: &toml::Value) -> usize {
    match pin {
        toml::Value::Table(t) => t
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "file" | "env"))
            .map(|(_, v)| count(v))
            .sum(),
        other => count(other),
    }
}

fn count(value: &toml::Value) -> usize {
    match value {
        toml::Value::String(s) => s.matches(SECRET).count(),
        toml::Value::Array(a) => a.iter().map(count).sum(),
        toml::Value::Table(t) => t
            .iter()
            .map(|(k, v)| k.matches(SECRET).count() + count(v))
            .sum(),
        _ => 0,
    }
}
