//! The whole-file checks (`validate`): every rule is checked and every failure reported with its
//! field path. Named for its job; `load` runs it on every file it parses.

use std::collections::{HashMap, HashSet};

use crate::error::FieldError;
use crate::schema::{Config, Operation, PinSource};

/// PKCS#11 token labels are 32 bytes, blank-padded.
const TOKEN_LABEL_MAX: usize = 32;

pub(crate) fn validate(config: &Config) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |path: String, message: &str| errors.push(FieldError::new(path, message));

    // Timeouts and limits.
    let t = &config.timeouts;
    range(&mut err, "timeouts.hsm_call_ms", t.hsm_call_ms, 10, 600_000);
    range(
        &mut err,
        "timeouts.default_deadline_ms",
        t.default_deadline_ms,
        10,
        3_600_000,
    );
    range(
        &mut err,
        "timeouts.probe_interval_ms",
        t.probe_interval_ms,
        10,
        3_600_000,
    );
    range(&mut err, "timeouts.drain_ms", t.drain_ms, 0, 3_600_000);
    let b = &config.batching;
    range(
        &mut err,
        "batching.max_request_items",
        b.max_request_items as u64,
        1,
        1_000_000,
    );
    range(
        &mut err,
        "batching.max_crl_bytes",
        b.max_crl_bytes as u64,
        64 << 10,
        256 << 20,
    );
    range(
        &mut err,
        "batching.worker_chunk",
        b.worker_chunk as u64,
        1,
        4_096,
    );
    range(
        &mut err,
        "dispatch.spill_queue_depth",
        config.dispatch.spill_queue_depth as u64,
        1,
        10_000_000,
    );

    // A hung HSM is detected after hsm_call_ms; callers must still have time for a retry.
    if t.hsm_call_ms >= t.default_deadline_ms {
        err(
            "timeouts.hsm_call_ms".into(),
            "must be less than timeouts.default_deadline_ms, or a hung HSM outlives its callers",
        );
    }

    // Datacenters and HSMs.
    if config.datacenters.is_empty() {
        err("datacenters".into(), "at least one datacenter is required");
    }
    let mut dc_names = HashSet::new();
    let mut hsm_names: HashMap<&str, String> = HashMap::new();
    let mut tokens: HashMap<(String, &str, String), String> = HashMap::new();
    for (d, dc) in config.datacenters.iter().enumerate() {
        let dpath = format!("datacenters[{d}]");
        name(&mut err, &format!("{dpath}.name"), &dc.name);
        if !dc_names.insert(dc.name.as_str()) {
            err(
                format!("{dpath}.name"),
                &format!("datacenter `{}` is defined twice", dc.name),
            );
        }
        if dc.hsms.is_empty() {
            err(
                format!("{dpath}.hsms"),
                "a datacenter needs at least one HSM",
            );
        }
        for (h, hsm) in dc.hsms.iter().enumerate() {
            let hpath = format!("{dpath}.hsms[{h}]");
            name(&mut err, &format!("{hpath}.name"), &hsm.name);
            if let Some(first) = hsm_names.insert(&hsm.name, hpath.clone()) {
                err(
                    format!("{hpath}.name"),
                    &format!("HSM `{}` is already defined at {first}", hsm.name),
                );
            }
            if hsm.module.as_os_str().is_empty() {
                err(
                    format!("{hpath}.module"),
                    "must be the path of a PKCS#11 module",
                );
            }
            if hsm.token_label.is_empty() || hsm.token_label.len() > TOKEN_LABEL_MAX {
                err(
                    format!("{hpath}.token_label"),
                    "must be 1 to 32 bytes (a PKCS#11 token label)",
                );
            }
            // Two HSM entries on the same token of the same module would be one HSM counted twice.
            let env = format!("{:?}", hsm.module_env);
            let token_key = (
                hsm.module.display().to_string(),
                hsm.token_label.as_str(),
                env,
            );
            if let Some(first) = tokens.insert(token_key, hpath.clone()) {
                err(
                    format!("{hpath}.token_label"),
                    &format!("the same module and token as {first}"),
                );
            }
            match &hsm.pin {
                PinSource::File(p) if p.as_os_str().is_empty() => {
                    err(format!("{hpath}.pin.file"), "must not be empty")
                }
                PinSource::Env(v) if v.is_empty() => {
                    err(format!("{hpath}.pin.env"), "must not be empty")
                }
                PinSource::Invalid(reason) => err(format!("{hpath}.pin"), reason),
                _ => {}
            }
            for (name, value) in &hsm.module_env {
                // set_var panics on these; the gateway sets them while loading the module.
                if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
                    err(
                        format!("{hpath}.module_env.{name}"),
                        "names must be non-empty without `=` or NUL; values without NUL",
                    );
                }
            }
            range(
                &mut err,
                &format!("{hpath}.sessions"),
                hsm.sessions.into(),
                1,
                1024,
            );
            if hsm.max_in_flight < hsm.sessions || hsm.max_in_flight > 1_000_000 {
                err(
                    format!("{hpath}.max_in_flight"),
                    &format!("must be between sessions ({}) and 1000000", hsm.sessions),
                );
            }
        }
    }
    if !dc_names.contains(config.gateway.local_datacenter.as_str()) {
        err(
            "gateway.local_datacenter".into(),
            &format!(
                "`{}` is not one of the datacenters",
                config.gateway.local_datacenter
            ),
        );
    }
    // Port 0 (tests) lets the OS pick distinct ports.
    if config.gateway.listen.port() != 0
        && config.gateway.metrics_listen == Some(config.gateway.listen)
    {
        err(
            "gateway.metrics_listen".into(),
            "must differ from gateway.listen",
        );
    }

    // Transport: mTLS, or the explicit loopback-only plain-text opt-in; never neither.
    let gw = &config.gateway;
    match (&gw.tls, &gw.insecure_plaintext) {
        (None, None) => err(
            "gateway.tls".into(),
            "required: mTLS for the signing API (cert, key, client_ca); a loopback-only test \
             gateway may set [gateway.insecure_plaintext] instead",
        ),
        (Some(_), Some(_)) => err(
            "gateway.insecure_plaintext".into(),
            "cannot be combined with gateway.tls: choose one",
        ),
        (Some(tls), None) => {
            for (field, p) in [
                ("cert", &tls.cert),
                ("key", &tls.key),
                ("client_ca", &tls.client_ca),
            ] {
                if p.as_os_str().is_empty() {
                    err(
                        format!("gateway.tls.{field}"),
                        "must be the path of a PEM file",
                    );
                }
            }
        }
        (None, Some(plain)) => {
            if !gw.listen.ip().is_loopback() {
                err(
                    "gateway.insecure_plaintext".into(),
                    &format!(
                        "refused: gateway.listen `{}` is not a loopback address; plain text \
                         would open the signing API to the network",
                        gw.listen
                    ),
                );
            }
            if config.client(&plain.client).is_none() {
                err(
                    "gateway.insecure_plaintext.client".into(),
                    &format!("no [[clients]] entry is named `{}`", plain.client),
                );
            }
        }
    }

    // Audit.
    if config.audit.dir.as_os_str().is_empty() {
        err("audit.dir".into(), "must be the path of a directory");
    }
    range(
        &mut err,
        "audit.max_file_bytes",
        config.audit.max_file_bytes,
        4_096,
        1 << 40,
    );
    range(
        &mut err,
        "audit.preallocate_bytes",
        config.audit.preallocate_bytes,
        0,
        1 << 30,
    );
    range(
        &mut err,
        "audit.commit_delay_us",
        config.audit.commit_delay_us,
        0,
        10_000,
    );
    if config.audit.bench_unaudited && !gw.listen.ip().is_loopback() {
        err(
            "audit.bench_unaudited".into(),
            &format!(
                "refused: gateway.listen `{}` is not a loopback address; a gateway without its \
                 audit log is for benchmarks on one machine only",
                gw.listen
            ),
        );
    }

    // Keys.
    let mut key_names = HashSet::new();
    for (k, key) in config.keys.iter().enumerate() {
        let kpath = format!("keys[{k}]");
        name(&mut err, &format!("{kpath}.name"), &key.name);
        if !key_names.insert(key.name.as_str()) {
            err(
                format!("{kpath}.name"),
                &format!("key `{}` is defined twice", key.name),
            );
        }
        if key.label.is_empty() {
            err(format!("{kpath}.label"), "must not be empty");
        }
        if key.hsms.is_empty() {
            err(
                format!("{kpath}.hsms"),
                "a key must be held by at least one HSM",
            );
        }
        let mut seen = HashSet::new();
        for (i, hsm) in key.hsms.iter().enumerate() {
            if !hsm_names.contains_key(hsm.as_str()) {
                err(
                    format!("{kpath}.hsms[{i}]"),
                    &format!("no HSM is named `{hsm}`"),
                );
            }
            if !seen.insert(hsm) {
                err(
                    format!("{kpath}.hsms[{i}]"),
                    &format!("`{hsm}` is listed twice"),
                );
            }
        }
    }

    // A batch fails RESOURCE_EXHAUSTED when its key's HSMs cannot hold it in flight together
    // (issue 12, item 6: 2 x 4,096 < 10,000 made batches of 8,193 items always fail, after some
    // were signed). The smallest such total bounds every batch.
    let in_flight: HashMap<&str, u64> = config
        .hsms()
        .map(|(_, h)| (h.name.as_str(), u64::from(h.max_in_flight)))
        .collect();
    let tightest = config
        .keys
        .iter()
        .enumerate()
        .map(|(k, key)| {
            let total: u64 = key
                .hsms
                .iter()
                .filter_map(|h| in_flight.get(h.as_str()))
                .sum();
            (total, k, key)
        })
        .filter(|(total, _, _)| *total > 0)
        .min_by_key(|(total, _, _)| *total);
    if let Some((total, k, key)) = tightest
        && b.max_request_items as u64 > total
    {
        err(
            "batching.max_request_items".into(),
            &format!(
                "{} is more than key `{}`'s HSMs can ever take in flight together ({total}, the \
                 sum of max_in_flight over keys[{k}].hsms): such a batch could never be signed",
                b.max_request_items, key.name
            ),
        );
    }

    // What issuing keys sign (ARCHITECTURE.md, invariant 1: a client granted OCSP signing cannot
    // get a certificate signed). An issuing key checks every declared payload; anything that
    // would let an unchecked payload reach it needs the key's explicit, logged opt-in.
    for (k, key) in config.keys.iter().enumerate() {
        let kpath = format!("keys[{k}]");
        if let Some(reason) = &key.allow_unchecked_payloads
            && reason.trim().is_empty()
        {
            err(
                format!("{kpath}.allow_unchecked_payloads"),
                "must say why this key may sign unchecked payloads (it is logged at every start)",
            );
        }
        if key.check_payload == Some(false)
            && key.allow_unchecked_payloads.is_none()
            && let Some(by) = issuing_grant(config, &key.name)
        {
            err(
                format!("{kpath}.check_payload"),
                &format!(
                    "refused: key `{}` is an issuing key ({by}), so what it signs must parse as \
                     declared; remove `check_payload = false`, or opt in with \
                     allow_unchecked_payloads = \"<reason>\" on a key nothing trusts",
                    key.name
                ),
            );
        }
    }
    for (c, client) in config.clients.iter().enumerate() {
        for (g, grant) in client.grants.iter().enumerate() {
            let Some(o) = grant
                .operations
                .iter()
                .position(|op| *op == Operation::SignRaw)
            else {
                continue;
            };
            let named: Vec<_> = if grant.keys.iter().any(|k| k == "*") {
                config.keys.iter().collect()
            } else {
                grant.keys.iter().filter_map(|k| config.key(k)).collect()
            };
            for key in named {
                if key.allow_unchecked_payloads.is_some() {
                    continue;
                }
                if let Some(by) = issuing_grant(config, &key.name) {
                    err(
                        format!("clients[{c}].grants[{g}].operations[{o}]"),
                        &format!(
                            "refused: sign-raw on key `{}`, an issuing key ({by}): an undeclared \
                             payload cannot be checked, so it could be a certificate; grant \
                             sign-raw on a separate key, or opt in with \
                             keys[].allow_unchecked_payloads = \"<reason>\" on a key nothing trusts",
                            key.name
                        ),
                    );
                }
            }
        }
    }

    // Clients and their grants.
    let plaintext_client = gw.insecure_plaintext.as_ref().map(|p| p.client.as_str());
    let mut client_names = HashSet::new();
    let mut identities: HashMap<String, String> = HashMap::new();
    for (c, client) in config.clients.iter().enumerate() {
        let cpath = format!("clients[{c}]");
        name(&mut err, &format!("{cpath}.name"), &client.name);
        if !client_names.insert(client.name.as_str()) {
            err(
                format!("{cpath}.name"),
                &format!("client `{}` is defined twice", client.name),
            );
        }
        match (&client.subject, &client.spki_sha256) {
            (Some(_), Some(_)) => err(
                format!("{cpath}.spki_sha256"),
                "set `subject` or `spki_sha256`, not both",
            ),
            (None, None) if plaintext_client != Some(client.name.as_str()) => err(
                format!("{cpath}.subject"),
                "required: the client certificate's `subject` or `spki_sha256`",
            ),
            _ => {}
        }
        if let Some(subject) = &client.subject {
            if subject.trim().is_empty() || !subject.contains('=') {
                err(
                    format!("{cpath}.subject"),
                    "must be an RFC 4514 name such as `CN=ocsp-presigner,O=hsmgate`",
                );
            }
            let id = format!("subject {}", subject.trim());
            if let Some(first) = identities.insert(id, cpath.clone()) {
                err(
                    format!("{cpath}.subject"),
                    &format!("the same subject as {first}"),
                );
            }
        }
        if let Some(spki) = &client.spki_sha256 {
            if spki.len() != 64 || !spki.chars().all(|c| c.is_ascii_hexdigit()) {
                err(
                    format!("{cpath}.spki_sha256"),
                    "must be 64 hex digits (SHA-256 of the DER SubjectPublicKeyInfo)",
                );
            }
            let id = format!("spki {}", spki.to_ascii_lowercase());
            if let Some(first) = identities.insert(id, cpath.clone()) {
                err(
                    format!("{cpath}.spki_sha256"),
                    &format!("the same key as {first}"),
                );
            }
        }
        for (g, grant) in client.grants.iter().enumerate() {
            let gpath = format!("{cpath}.grants[{g}]");
            if grant.keys.is_empty() {
                err(format!("{gpath}.keys"), "at least one key (or \"*\")");
            }
            for (i, key) in grant.keys.iter().enumerate() {
                if key != "*" && !key_names.contains(key.as_str()) {
                    err(
                        format!("{gpath}.keys[{i}]"),
                        &format!("no key is named `{key}`"),
                    );
                }
            }
            if grant.operations.is_empty() {
                err(
                    format!("{gpath}.operations"),
                    "at least one of sign-raw, sign-certificate, sign-ocsp, sign-crl",
                );
            }
        }
        let l = &client.limits;
        if let Some(rate) = l.signatures_per_sec {
            range(
                &mut err,
                &format!("{cpath}.limits.signatures_per_sec"),
                rate.into(),
                1,
                10_000_000,
            );
        }
        if let Some(burst) = l.burst {
            if l.signatures_per_sec.is_none() {
                err(
                    format!("{cpath}.limits.burst"),
                    "only meaningful with signatures_per_sec",
                );
            }
            range(
                &mut err,
                &format!("{cpath}.limits.burst"),
                burst.into(),
                1,
                100_000_000,
            );
        }
        range(
            &mut err,
            &format!("{cpath}.limits.max_concurrent"),
            l.max_concurrent.into(),
            1,
            1_000_000,
        );
        if let Some(n) = l.max_queued_signatures {
            range(
                &mut err,
                &format!("{cpath}.limits.max_queued_signatures"),
                n.into(),
                0,
                100_000_000,
            );
        }
        range(
            &mut err,
            &format!("{cpath}.limits.share"),
            l.share.into(),
            1,
            1_000,
        );
    }
    errors
}

/// The first grant that makes `key` an issuing key, described for an error message
/// (`sign-ocsp granted to `ocsp-presigner``), or `None` if it is not one.
fn issuing_grant(config: &Config, key: &str) -> Option<String> {
    config.clients.iter().find_map(|c| {
        c.grants
            .iter()
            .filter(|g| g.keys.iter().any(|k| k == key || k == "*"))
            .flat_map(|g| &g.operations)
            .find(|op| op.is_issuing())
            .map(|op| format!("{} granted to `{}`", op.as_str(), c.name))
    })
}

fn range(err: &mut impl FnMut(String, &str), path: &str, value: u64, min: u64, max: u64) {
    if value < min || value > max {
        err(path.to_owned(), &format!("must be between {min} and {max}"));
    }
}

/// Names appear in metrics labels and log lines: keep them plain.
fn name(err: &mut impl FnMut(String, &str), path: &str, value: &str) {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        err(
            path.to_owned(),
            "must be 1 to 64 characters of [A-Za-z0-9._-]",
        );
    }
}
