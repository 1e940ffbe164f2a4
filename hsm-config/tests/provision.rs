//! `provision` against real SoftHSM2 tokens, checked with Debian's tools (`pkcs11-tool`,
//! `softhsm2-util`, `openssl`) independently of the code under test.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hsm_config::{Config, Error};
use hsm_config::{ProvisionOptions, ProvisionReport, key_id, provision};
use tempfile::TempDir;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

struct Env {
    dir: TempDir,
    options: ProvisionOptions,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = ProvisionOptions {
            softhsm_conf: dir.path().join("softhsm/softhsm2.conf"),
            public_key_dir: dir.path().join("public-keys"),
        };
        Self { dir, options }
    }

    /// `text` as a config file in the temp dir, relative paths resolving there.
    fn config(&self, text: &str) -> Config {
        Config::parse(text, Path::new("test.toml"), self.dir.path().to_owned())
            .expect("valid config")
    }

    fn provision(&self, config: &Config) -> Result<ProvisionReport, Error> {
        provision(config, &self.options)
    }

    fn tool(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SOFTHSM2_CONF", &self.options.softhsm_conf);
        cmd
    }

    /// pkcs11-tool logged in to the token of HSM `hsm`.
    fn p11(&self, config: &Config, hsm: &str, args: &[&str]) -> Output {
        let (_, h) = config.hsm(hsm).expect("hsm");
        let pin = h.pin.read(&h.name, &config.base_dir).expect("pin");
        let out = self
            .tool("pkcs11-tool")
            .args([
                "--module",
                MODULE,
                "--token-label",
                &h.token_label,
                "--login",
                "--pin",
            ])
            .arg(pin.expose())
            .args(args)
            .output()
            .expect("run pkcs11-tool");
        assert!(
            out.status.success(),
            "pkcs11-tool {args:?} on {hsm}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn public_key(&self, key: &str, ext: &str) -> PathBuf {
        self.options.public_key_dir.join(format!("{key}.{ext}"))
    }
}

/// `examples/two-dc.toml` with each HSM's PIN in its own (not yet existing) file.
fn two_dc_text() -> String {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/two-dc.toml");
    let text = std::fs::read_to_string(example).expect("example");
    let mut n = 0;
    let out: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with("pin = { env = \"HSMGATE_TEST_PIN\" }") {
                n += 1;
                format!("pin = {{ file = \"pins/hsm{n}.pin\" }}")
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert_eq!(n, 4, "the example's PIN lines changed");
    out.join("\n")
}

/// A one-datacenter config: HSM `x` has token `X` and PIN file `pins/x.pin`.
fn mini(hsms: &[&str], keys: &[(&str, &str, &[&str])]) -> String {
    let mut t = String::from(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nlocal_datacenter = \"dc\"\n\n[gateway.insecure_plaintext]\nclient = \"tests\"\n\n[audit]\ndir = \"audit\"\n\n[[clients]]\nname = \"tests\"\n\n[[datacenters]]\nname = \"dc\"\n",
    );
    for h in hsms {
        t += &format!(
            "[[datacenters.hsms]]\nname = \"{h}\"\nmodule = \"{MODULE}\"\ntoken_label = \"{}\"\npin = {{ file = \"pins/{h}.pin\" }}\n",
            h.to_uppercase()
        );
    }
    for (name, alg, on) in keys {
        let on: Vec<_> = on.iter().map(|h| format!("\"{h}\"")).collect();
        t += &format!(
            "[[keys]]\nname = \"{name}\"\nlabel = \"{name}\"\nalgorithm = \"{alg}\"\nhsms = [{}]\n",
            on.join(", ")
        );
    }
    t
}

/// `(class, label) -> CKA_EC_POINT hex` from `pkcs11-tool --list-objects`, plus every object's
/// (class, label).
fn objects(listing: &str) -> (BTreeSet<(String, String)>, BTreeMap<String, String>) {
    let (mut all, mut points) = (BTreeSet::new(), BTreeMap::new());
    let (mut class, mut point) = (String::new(), None);
    for line in listing.lines() {
        if !line.starts_with(' ') {
            class = line.split(';').next().unwrap_or_default().to_owned();
            point = None;
        } else if let Some(v) = line.trim().strip_prefix("EC_POINT:") {
            point = Some(v.trim().to_owned());
        } else if let Some(v) = line.trim().strip_prefix("label:") {
            all.insert((class.clone(), v.trim().to_owned()));
            if let Some(p) = point.take() {
                points.insert(v.trim().to_owned(), p);
            }
        }
    }
    (all, points)
}

fn provision_err(env: &Env, config: &Config) -> String {
    match env.provision(config) {
        Err(Error::Provision(msg)) => msg,
        other => panic!("expected a provisioning error, got {other:?}"),
    }
}

#[test]
fn two_dc_tokens_hold_the_same_keys_and_a_second_run_does_nothing() {
    let env = Env::new();
    let config = env.config(&two_dc_text());
    let started = std::time::Instant::now();
    let report = env.provision(&config).expect("provision");
    eprintln!("provisioning two-dc.toml took {:?}", started.elapsed());

    assert_eq!(
        report.tokens_created,
        ["EAST-1", "EAST-2", "WEST-1", "WEST-2"]
    );
    assert_eq!(
        report.keys_created,
        ["ca-p256", "ca-p384", "ca-rsa", "ca-ed25519", "west-only"]
    );
    assert!(report.keys_present.is_empty());
    assert_eq!(report.pin_files_created.len(), 4);
    for pin_file in &report.pin_files_created {
        let mode = std::fs::metadata(pin_file)
            .expect("pin file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", pin_file.display());
    }

    // Four initialised tokens (plus SoftHSM2's one free slot).
    let slots = env
        .tool("softhsm2-util")
        .arg("--show-slots")
        .output()
        .expect("show-slots");
    let slots = String::from_utf8_lossy(&slots.stdout);
    let mut labels: Vec<_> = slots
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Label:"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    labels.sort();
    assert_eq!(labels, ["EAST-1", "EAST-2", "WEST-1", "WEST-2"]);

    for (_, hsm) in config.hsms() {
        let listing = env.p11(&config, &hsm.name, &["--list-objects"]);
        let (all, points) = objects(&String::from_utf8_lossy(&listing.stdout));

        // Exactly the keys the config gives this HSM, each as a private and a public key.
        let mut want = BTreeSet::new();
        for key in config.keys.iter().filter(|k| k.hsms.contains(&hsm.name)) {
            want.insert(("Private Key Object".to_owned(), key.label.clone()));
            want.insert(("Public Key Object".to_owned(), key.label.clone()));
        }
        assert_eq!(all, want, "objects on {}", hsm.name);

        // The public key in this HSM is the one provision wrote out.
        for key in config.keys.iter().filter(|k| k.hsms.contains(&hsm.name)) {
            let spki = std::fs::read(env.public_key(&key.name, "spki.der")).expect("spki");
            match points.get(&key.label) {
                Some(point) => {
                    // EC: an OCTET STRING holding 04||X||Y; Ed25519 (softhsm2-util): the raw point.
                    let point = hex::decode(point).expect("hex");
                    let raw = if key.name == "ca-ed25519" {
                        assert_eq!(point.len(), 32, "softhsm2-util stores a raw Ed25519 point");
                        &point[..]
                    } else {
                        &point[2..]
                    };
                    assert!(spki.ends_with(raw), "{} on {}", key.name, hsm.name);
                }
                None => {
                    assert_eq!(key.name, "ca-rsa");
                    let der = env.p11(
                        &config,
                        &hsm.name,
                        &["--read-object", "--type", "pubkey", "--label", &key.label],
                    );
                    assert_eq!(der.stdout, spki, "{} on {}", key.name, hsm.name);
                }
            }
        }
    }

    // Signatures from two different tokens verify against the one public key file.
    let dir = env.dir.path();
    let digest = dir.join("digest");
    std::fs::write(&digest, [0x5au8; 32]).expect("digest");
    let message = dir.join("message");
    std::fs::write(&message, b"to be signed").expect("message");
    let sign = |hsm: &str, key: &str, mechanism: &str, input: &Path, extra: &[&str]| {
        // pkcs11-tool 0.23's --sign ignores --label (it takes the first private key): use --id.
        let id = hex::encode(key_id(key));
        let sig = dir.join(format!("{key}-{hsm}.sig"));
        let (i, o) = (input.to_str().expect("utf-8"), sig.to_str().expect("utf-8"));
        let mut args = vec![
            "--sign",
            "--mechanism",
            mechanism,
            "--id",
            &id,
            "-i",
            i,
            "-o",
            o,
        ];
        args.extend_from_slice(extra);
        env.p11(&config, hsm, &args);
        sig
    };
    let verify = |mut cmd: Command| {
        let out = cmd.output().expect("openssl");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for hsm in ["east-1", "west-2"] {
        let sig = sign(
            hsm,
            "ca-p256",
            "ECDSA",
            &digest,
            &["--signature-format", "openssl"],
        );
        let mut cmd = Command::new("openssl");
        cmd.args(["pkeyutl", "-verify", "-pubin", "-inkey"])
            .arg(env.public_key("ca-p256", "pub.pem"))
            .arg("-in")
            .arg(&digest)
            .arg("-sigfile")
            .arg(&sig);
        verify(cmd);
    }
    for hsm in ["east-2", "west-1"] {
        let sig = sign(hsm, "ca-ed25519", "EDDSA", &message, &[]);
        let mut cmd = Command::new("openssl");
        cmd.args(["pkeyutl", "-verify", "-rawin", "-pubin", "-inkey"])
            .arg(env.public_key("ca-ed25519", "pub.pem"))
            .arg("-in")
            .arg(&message)
            .arg("-sigfile")
            .arg(&sig);
        verify(cmd);

        let sig = sign(hsm, "ca-rsa", "SHA256-RSA-PKCS", &message, &[]);
        let mut cmd = Command::new("openssl");
        cmd.args(["dgst", "-sha256", "-verify"])
            .arg(env.public_key("ca-rsa", "pub.pem"))
            .arg("-signature")
            .arg(&sig)
            .arg(&message);
        verify(cmd);
    }

    // The PEM files are what openssl makes of the DER ones.
    for key in &config.keys {
        let out = Command::new("openssl")
            .args(["pkey", "-pubin", "-inform", "DER", "-in"])
            .arg(env.public_key(&key.name, "spki.der"))
            .output()
            .expect("openssl");
        let pem = std::fs::read(env.public_key(&key.name, "pub.pem")).expect("pem");
        assert_eq!(out.stdout, pem, "{}", key.name);
    }

    // Second run: nothing to do.
    let before: Vec<_> = config
        .keys
        .iter()
        .map(|k| std::fs::read(env.public_key(&k.name, "spki.der")).expect("spki"))
        .collect();
    let again = env.provision(&config).expect("second run");
    assert_eq!(
        again,
        ProvisionReport {
            keys_present: report.keys_created.clone(),
            ..ProvisionReport::default()
        }
    );
    let after: Vec<_> = config
        .keys
        .iter()
        .map(|k| std::fs::read(env.public_key(&k.name, "spki.der")).expect("spki"))
        .collect();
    assert_eq!(before, after);

    // The public key files are derived from the tokens, not remembered: they come back.
    std::fs::remove_dir_all(&env.options.public_key_dir).expect("rm");
    env.provision(&config).expect("third run");
    let restored: Vec<_> = config
        .keys
        .iter()
        .map(|k| std::fs::read(env.public_key(&k.name, "spki.der")).expect("spki"))
        .collect();
    assert_eq!(before, restored);
}

#[test]
fn a_key_in_some_hsms_but_not_others_is_refused() {
    let env = Env::new();
    let first = env.config(&mini(&["a", "b", "c"], &[("k", "ecdsa-p256", &["a"])]));
    env.provision(&first).expect("provision");

    let wider = env.config(&mini(
        &["a", "b", "c"],
        &[("k", "ecdsa-p256", &["a", "b", "c"])],
    ));
    let msg = provision_err(&env, &wider);
    assert_eq!(
        msg,
        "key `k` (label `k`) is missing from HSM(s) `b`, `c`: cannot clone a non-extractable key; \
         delete the tokens (the token dir) and provision again"
    );
    // Nothing was imported by the failed run.
    let listing = env.p11(&wider, "b", &["--list-objects"]);
    assert!(
        objects(&String::from_utf8_lossy(&listing.stdout))
            .0
            .is_empty()
    );
}

#[test]
fn different_keys_under_one_label_are_refused() {
    let env = Env::new();
    env.provision(&env.config(&mini(&["a", "b"], &[("k", "ed25519", &["a"])])))
        .expect("a");
    env.provision(&env.config(&mini(&["a", "b"], &[("k", "ed25519", &["b"])])))
        .expect("b");
    let both = env.config(&mini(&["a", "b"], &[("k", "ed25519", &["a", "b"])]));
    let msg = provision_err(&env, &both);
    assert!(
        msg.starts_with("key `k`: token A (HSM `a`) and token B (HSM `b`) hold different keys"),
        "{msg}"
    );
}

#[test]
fn an_existing_key_of_another_algorithm_is_refused() {
    let env = Env::new();
    env.provision(&env.config(&mini(&["a"], &[("k", "ecdsa-p256", &["a"])])))
        .expect("p256");
    let msg = provision_err(
        &env,
        &env.config(&mini(&["a"], &[("k", "ecdsa-p384", &["a"])])),
    );
    assert_eq!(
        msg,
        "key `k`: token A (HSM `a`) holds `k` as EC with EC_PARAMS 06082a8648ce3d030107, but the \
         config says ecdsa-p384"
    );
}

#[test]
fn pin_problems_are_reported_without_the_pin() {
    let env = Env::new();
    let config = env.config(&mini(&["a"], &[]));
    env.provision(&config).expect("provision");
    let pin_file = env.dir.path().join("pins/a.pin");
    let pin = std::fs::read_to_string(&pin_file).expect("pin");
    assert_eq!(pin.trim().len(), 16);

    // A wrong PIN: the tool's complaint, not the PIN.
    std::fs::write(&pin_file, "0000000000000000\n").expect("write");
    let msg = provision_err(&env, &config);
    assert!(
        msg.contains("token A (HSM `a`)") && msg.contains("CKR_PIN_INCORRECT"),
        "{msg}"
    );
    assert!(
        !msg.contains("0000000000000000") && !msg.contains(pin.trim()),
        "{msg}"
    );

    // The token exists but its PIN file is gone: a new random PIN would be useless.
    std::fs::remove_file(&pin_file).expect("rm");
    let msg = provision_err(&env, &config);
    assert!(msg.contains("token A exists but its PIN file"), "{msg}");
    assert!(!pin_file.exists());

    // An unset PIN variable.
    let text = mini(&["b"], &[]).replace(
        "pin = { file = \"pins/b.pin\" }",
        "pin = { env = \"HSMGATE_TEST_PROVISION_UNSET_PIN\" }",
    );
    match env.provision(&env.config(&text)) {
        Err(Error::Pin { hsm, reason }) => {
            assert_eq!(hsm, "b");
            assert!(
                reason.contains("HSMGATE_TEST_PROVISION_UNSET_PIN"),
                "{reason}"
            );
        }
        other => panic!("expected a PIN error, got {other:?}"),
    }
}

#[test]
fn concurrent_runs_on_one_softhsm_conf_create_each_key_once() {
    let env = Env::new();
    let config = env.config(&mini(
        &["a", "b"],
        &[("k1", "ecdsa-p256", &["a", "b"]), ("k2", "ed25519", &["b"])],
    ));
    let reports: Vec<ProvisionReport> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| env.provision(&config).expect("provision")))
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("thread"))
            .collect()
    });
    let created: Vec<_> = reports
        .iter()
        .flat_map(|r| r.keys_created.clone())
        .collect();
    let present: Vec<_> = reports
        .iter()
        .flat_map(|r| r.keys_present.clone())
        .collect();
    assert_eq!(created.len(), 2, "{reports:?}");
    assert_eq!(present.len(), 4, "{reports:?}");
    assert_eq!(
        reports
            .iter()
            .map(|r| r.tokens_created.len())
            .sum::<usize>(),
        2
    );
}
