//! `hsm-config check`: the examples are valid; a bad file gets every error with its field path,
//! and never an echo of a secret.

use std::path::Path;
use std::process::Command;

use hsm_config::{Config, Error, KeyAlgorithm, PayloadPolicy, PinSource};

const DEV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/dev.toml");
const TWO_DC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/two-dc.toml");

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_hsm-config"))
        .arg("check")
        .arg(&path)
        .output()
        .expect("run hsm-config");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_examples_are_valid() {
    for file in [DEV, TWO_DC] {
        let text = std::fs::read_to_string(file).expect("example");
        let (ok, out) = check(&text);
        assert!(ok, "{file}: {out}");
    }
    let two = Config::load(TWO_DC).expect("loads");
    assert_eq!(two.datacenters.len(), 2);
    assert_eq!(two.hsms().count(), 4);
    assert_eq!(
        two.key("ca-rsa").map(|k| k.algorithm),
        Some(KeyAlgorithm::Rsa2048)
    );
    assert_eq!(
        two.hsm("west-2").map(|(dc, _)| dc.name.as_str()),
        Some("dc-west")
    );
    assert!(
        matches!(two.hsm("east-1").map(|(_, h)| &h.pin), Some(PinSource::Env(v)) if v == "HSMGATE_TEST_PIN")
    );
}

#[test]
fn every_broken_rule_is_reported_with_its_field_path() {
    let text = std::fs::read_to_string(TWO_DC)
        .expect("example")
        .replacen("sessions = 2", "sessions = 0", 1)
        .replacen("sessions = 2", "sessions = 2000", 1)
        .replace(r#"name = "west-2""#, r#"name = "west-1""#)
        .replace(
            r#"local_datacenter = "dc-east""#,
            r#"local_datacenter = "mars""#,
        )
        .replace(r#"hsm_call_ms = 1000"#, r#"hsm_call_ms = 0"#)
        .replacen(
            r#"hsms = ["west-1", "west-2"]"#,
            r#"hsms = ["west-1", "west-1", "nowhere"]"#,
            1,
        );
    let (ok, out) = check(&text);
    assert!(!ok, "{out}");
    for expected in [
        "timeouts.hsm_call_ms: must be between 10 and 600000",
        "datacenters[0].hsms[0].sessions: must be between 1 and 1024",
        "datacenters[0].hsms[1].sessions: must be between 1 and 1024",
        "datacenters[1].hsms[1].name: HSM `west-1` is already defined at datacenters[1].hsms[0]",
        "gateway.local_datacenter: `mars` is not one of the datacenters",
        "keys[4].hsms[1]: `west-1` is listed twice",
        "keys[4].hsms[2]: no HSM is named `nowhere`",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}

#[test]
fn typos_and_wrong_types_name_the_key() {
    let text =
        std::fs::read_to_string(DEV)
            .expect("example")
            .replacen("sessions = 2", "sesions = 2", 1);
    let (ok, out) = check(&text);
    assert!(!ok);
    assert!(out.contains("unknown field `sesions`"), "{out}");
    let text = std::fs::read_to_string(DEV).expect("example").replacen(
        "sessions = 2",
        r#"sessions = "two""#,
        1,
    );
    let (ok, out) = check(&text);
    assert!(!ok);
    assert!(out.contains("sessions"), "{out}");
    let (ok, out) = check("this is not toml");
    assert!(!ok && !out.is_empty());
}

#[test]
fn inline_pins_are_refused_without_being_echoed() {
    for inline in [
        r#"pin = "2741-secret""#,
        r#"pin = 27410000"#,
        r#"pin = { file = "x", pin = "2741-secret" }"#,
    ] {
        let text = std::fs::read_to_string(DEV).expect("example").replacen(
            r#"pin = { file = "../../target/dev/pins/dev-a.pin" }"#,
            inline,
            1,
        );
        let (ok, out) = check(&text);
        assert!(!ok, "{inline}: {out}");
        assert!(out.contains("datacenters[0].hsms[0].pin:"), "{out}");
        assert!(
            !out.contains("2741"),
            "the PIN was echoed for {inline}:\n{out}"
        );
    }
}

#[test]
fn pins_come_from_files_or_the_environment_and_never_print() {
    let dir = tempfile::tempdir().expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join("p.pin");
    std::fs::write(&path, "8642\n").expect("write");
    // World-readable: refused, without the PIN.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = PinSource::File("p.pin".into())
        .read("h", dir.path())
        .expect_err("0644 is refused");
    assert!(err.to_string().contains("mode 644"), "{err}");
    assert!(!err.to_string().contains("8642"), "{err}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let pin = PinSource::File("p.pin".into())
        .read("h", dir.path())
        .expect("reads");
    assert_eq!(pin.expose(), "8642");
    assert!(!format!("{pin:?}").contains("8642"));
    let err = PinSource::File("missing.pin".into())
        .read("h", dir.path())
        .expect_err("missing");
    assert!(err.to_string().contains("missing.pin"));
    let err = PinSource::Env("HSMGATE_SURELY_UNSET_VAR".into())
        .read("h", Path::new("."))
        .expect_err("unset");
    assert!(matches!(err, Error::Pin { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("HSMGATE_SURELY_UNSET_VAR is not set")
    );
}

#[test]
fn module_environment_and_timeouts_are_checked() {
    let text = std::fs::read_to_string(TWO_DC)
        .expect("example")
        .replace("hsm_call_ms = 1000", "hsm_call_ms = 20000")
        .replacen(
            r#"token_label = "EAST-1""#,
            "token_label = \"EAST-1\"\nmodule_env = { \"BAD=NAME\" = \"x\" }",
            1,
        );
    let (ok, out) = check(&text);
    assert!(!ok, "{out}");
    assert!(
        out.contains("timeouts.hsm_call_ms: must be less than timeouts.default_deadline_ms"),
        "{out}"
    );
    assert!(
        out.contains("datacenters[0].hsms[0].module_env.BAD=NAME: names must be non-empty"),
        "{out}"
    );
}

#[test]
fn plain_text_is_an_explicit_loopback_only_choice() {
    let two = std::fs::read_to_string(TWO_DC).expect("example");
    let plain = "[gateway.insecure_plaintext]\nclient = \"tests\"\n";
    assert!(
        two.contains(plain),
        "two-dc.toml's plain-text table changed"
    );

    // Neither TLS nor the opt-in.
    let (ok, out) = check(&two.replace(plain, ""));
    assert!(!ok);
    assert!(out.contains("gateway.tls: required"), "{out}");
    // The opt-in off loopback.
    let (ok, out) =
        check(&two.replace("\nlisten = \"127.0.0.1:0\"", "\nlisten = \"0.0.0.0:50051\""));
    assert!(!ok);
    assert!(
        out.contains("gateway.insecure_plaintext: refused: gateway.listen `0.0.0.0:50051` is not a loopback address"),
        "{out}"
    );
    // Both.
    let tls = "[gateway.tls]\ncert = \"s.pem\"\nkey = \"s.key\"\nclient_ca = \"ca.pem\"\n";
    let (ok, out) = check(&two.replace(plain, &format!("{plain}\n{tls}")));
    assert!(!ok);
    assert!(
        out.contains("gateway.insecure_plaintext: cannot be combined with gateway.tls"),
        "{out}"
    );
    // TLS alone is fine on any address; the plain-text client then needs an identity.
    let (ok, out) = check(
        &two.replace(plain, tls)
            .replace("\nlisten = \"127.0.0.1:0\"", "\nlisten = \"0.0.0.0:50051\""),
    );
    assert!(!ok);
    assert!(out.contains("clients[0].subject: required"), "{out}");
    let (ok, out) = check(
        &two.replace(plain, tls)
            .replace("\nlisten = \"127.0.0.1:0\"", "\nlisten = \"0.0.0.0:50051\"")
            .replace(
                "name = \"tests\"\n",
                "name = \"tests\"\nsubject = \"CN=tests\"\n",
            ),
    );
    assert!(ok, "{out}");
}

#[test]
fn clients_grants_limits_and_audit_are_checked() {
    let two = std::fs::read_to_string(TWO_DC).expect("example");
    let text = format!(
        "{}\n{}",
        two.replace(
            "dir = \"audit\"",
            "dir = \"audit\"\nmax_file_bytes = 10\non_failure = \"log-and-continue\""
        ),
        r#"
[[clients]]
name = "a"
subject = "CN=a"
spki_sha256 = "zz"
grants = [{ keys = ["ca-p256", "root"], operations = [] }]
limits = { signatures_per_sec = 0, burst = 10 }

[[clients]]
name = "b"
subject = "CN=a"
limits = { share = 0, max_concurrent = 0 }
"#
    );
    let (ok, out) = check(&text);
    assert!(!ok);
    for expected in [
        "audit.max_file_bytes: must be between 4096",
        "clients[1].spki_sha256: set `subject` or `spki_sha256`, not both",
        "clients[1].spki_sha256: must be 64 hex digits",
        "clients[1].grants[0].keys[1]: no key is named `root`",
        "clients[1].grants[0].operations: at least one of",
        "clients[1].limits.signatures_per_sec: must be between 1",
        "clients[2].subject: the same subject as clients[1]",
        "clients[2].limits.share: must be between 1 and 1000",
        "clients[2].limits.max_concurrent: must be between 1",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    // Missing [audit] altogether.
    let start = two.find("[audit]").expect("audit table");
    let without = format!(
        "{}{}",
        &two[..start],
        &two[start + "[audit]\ndir = \"audit\"\n".len()..]
    );
    let (ok, out) = check(&without);
    assert!(!ok);
    assert!(out.contains("missing field `audit`"), "{out}");
    // The dev config (mTLS) is valid and grants the OCSP pre-signer no root-like wildcard.
    let dev = Config::load(DEV).expect("dev config");
    assert!(dev.gateway.tls.is_some() && dev.gateway.insecure_plaintext.is_none());
    // Every client has limits even where the file sets none (`bench`).
    let bench = dev
        .clients
        .iter()
        .find(|c| c.name == "bench")
        .expect("bench");
    assert_eq!(bench.limits, hsm_config::ClientLimits::default());
    assert_eq!(bench.limits.max_concurrent, 1024);
    assert_eq!(bench.limits.share, 1);
    assert!(
        dev.clients
            .iter()
            .all(|c| c.grants.iter().all(|g| !g.keys.contains(&"*".to_owned())))
    );
}

/// `[audit] bench_unaudited` parses (only a `bench-unaudited` build of the gateway honours it;
/// signer/tests/security.rs checks that every other build refuses it), but never off loopback.
#[test]
fn an_unaudited_benchmark_gateway_is_loopback_only() {
    let two = std::fs::read_to_string(TWO_DC).expect("example");
    let unaudited = two.replace("dir = \"audit\"", "dir = \"audit\"\nbench_unaudited = true");
    assert_ne!(unaudited, two, "two-dc.toml's [audit] table changed");
    let (ok, out) = check(&unaudited);
    assert!(ok, "{out}");
    assert!(!Config::load(TWO_DC).expect("loads").audit.bench_unaudited);

    let tls = "[gateway.tls]\ncert = \"s.pem\"\nkey = \"s.key\"\nclient_ca = \"ca.pem\"\n";
    let (ok, out) = check(
        &unaudited
            .replace("[gateway.insecure_plaintext]\nclient = \"tests\"\n", tls)
            .replace("\nlisten = \"127.0.0.1:0\"", "\nlisten = \"0.0.0.0:50051\"")
            .replace(
                "name = \"tests\"\n",
                "name = \"tests\"\nsubject = \"CN=tests\"\n",
            ),
    );
    assert!(!ok);
    assert!(
        out.contains("audit.bench_unaudited: refused: gateway.listen `0.0.0.0:50051` is not a loopback address"),
        "{out}"
    );
}

/// Issue 12, item 1: an issuing key (some client may sign certificates or OCSP responses with
/// it, `"*"` included) checks what it signs by default, and a file that would let an unchecked
/// payload reach one is refused at load, naming the field — unless the key opts in, with a
/// reason.
#[test]
fn unchecked_payloads_on_issuing_keys_are_refused_naming_the_field() {
    let dev = std::fs::read_to_string(DEV).expect("dev config");
    let config = Config::load(DEV).expect("dev config");
    let policy = |name: &str| config.payload_policy(config.key(name).expect("key"));
    for issuing in ["dev-root", "dev-p256", "dev-rsa"] {
        assert!(config.is_issuing_key(issuing), "{issuing}");
        assert_eq!(
            policy(issuing),
            PayloadPolicy {
                check_declared: true,
                allow_raw: false
            },
            "{issuing}"
        );
    }
    assert!(!config.is_issuing_key("dev-p384"));
    assert!(!policy("dev-p384").check_declared && policy("dev-p384").allow_raw);
    assert_eq!(
        policy("dev-bench-p256"),
        PayloadPolicy {
            check_declared: true,
            allow_raw: true
        }
    );

    // sign-raw granted on the intermediate, by name.
    let bench_raw =
        r#"{ keys = ["dev-bench-p256", "dev-p384", "dev-ed25519"], operations = ["sign-raw"] }"#;
    assert!(dev.contains(bench_raw), "dev.toml's bench grant changed");
    let (ok, out) = check(&dev.replace(
        bench_raw,
        r#"{ keys = ["dev-p384", "dev-p256"], operations = ["sign-raw"] }"#,
    ));
    assert!(!ok);
    assert!(
        out.contains(
            "clients[3].grants[0].operations[0]: refused: sign-raw on key `dev-p256`, an issuing \
             key (sign-ocsp granted to `ocsp-presigner`)"
        ),
        "{out}"
    );

    // sign-raw on every key by `"*"`: refused for each issuing key, not for the others.
    let wildcard = format!(
        "{dev}\n[[clients]]\nname = \"wild\"\nsubject = \"CN=wild\"\n\
         grants = [{{ keys = [\"*\"], operations = [\"sign-ocsp\", \"sign-raw\"] }}]\n"
    );
    let (ok, out) = check(&wildcard);
    assert!(!ok);
    for key in ["dev-root", "dev-p256", "dev-p384", "dev-rsa", "dev-ed25519"] {
        assert!(
            out.contains(&format!(
                "clients[4].grants[0].operations[1]: refused: sign-raw on key `{key}`"
            )),
            "{key}: {out}"
        );
    }
    // ... but "*" with sign-ocsp made every key issuing, so the bench's raw grant on dev-p384
    // is refused too; dev-bench-p256 opted in.
    assert!(
        out.contains("clients[3].grants[0].operations[0]: refused: sign-raw on key `dev-p384`"),
        "{out}"
    );
    assert!(!out.contains("`dev-bench-p256`"), "{out}");

    // check_payload = false on an issuing key.
    let p256 = "name = \"dev-p256\"\nlabel = \"dev-p256\"\n";
    assert!(dev.contains(p256));
    let unchecked = dev.replace(p256, &format!("{p256}check_payload = false\n"));
    let (ok, out) = check(&unchecked);
    assert!(!ok);
    assert!(
        out.contains("keys[1].check_payload: refused: key `dev-p256` is an issuing key"),
        "{out}"
    );

    // The opt-in accepts both, and must give a reason.
    let opted = unchecked.replace(
        "check_payload = false\n",
        "check_payload = false\nallow_unchecked_payloads = \"test key\"\n",
    );
    let (ok, out) = check(&opted);
    assert!(ok, "{out}");
    let (ok, out) = check(&opted.replace("\"test key\"", "\" \""));
    assert!(!ok);
    assert!(
        out.contains("keys[1].allow_unchecked_payloads: must say why"),
        "{out}"
    );

    // A non-issuing key may sign raw and may ask for checks (then raw is refused at run time).
    let (ok, out) = check(&dev.replace(
        "name = \"dev-p384\"\nlabel = \"dev-p384\"\n",
        "name = \"dev-p384\"\nlabel = \"dev-p384\"\ncheck_payload = true\n",
    ));
    assert!(ok, "{out}");
}

/// Issue 12, item 6: a batch the key's HSMs can never hold in flight together always failed
/// (RESOURCE_EXHAUSTED, after some items were signed): such a limit is refused at load.
#[test]
fn a_batch_limit_the_hsms_cannot_hold_is_refused() {
    let dev = std::fs::read_to_string(DEV).expect("dev config");
    assert!(dev.contains("max_request_items = 8192"));
    let (ok, out) = check(&dev.replace("max_request_items = 8192", "max_request_items = 8193"));
    assert!(!ok);
    assert!(
        out.contains(
            "batching.max_request_items: 8193 is more than key `dev-root`'s HSMs can ever take \
             in flight together (8192, the sum of max_in_flight over keys[0].hsms)"
        ),
        "{out}"
    );
    // A key on one HSM of the pair bounds every batch by that HSM alone.
    let (ok, out) = check(&dev.replace(
        "name = \"dev-p384\"\nlabel = \"dev-p384\"\nalgorithm = \"ecdsa-p384\"\nhsms = [\"dev-a\", \"dev-b\"]",
        "name = \"dev-p384\"\nlabel = \"dev-p384\"\nalgorithm = \"ecdsa-p384\"\nhsms = [\"dev-a\"]",
    ));
    assert!(!ok);
    assert!(out.contains("key `dev-p384`'s HSMs"), "{out}");
    // The default fits one HSM with its default max_in_flight.
    assert_eq!(hsm_config::Batching::default().max_request_items, 4096);
}
