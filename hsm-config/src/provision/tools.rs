//! The Debian tools provisioning drives as subprocesses (`softhsm2-util`, `pkcs11-tool`,
//! `openssl`), each with `SOFTHSM2_CONF` in its own environment and any PIN redacted from
//! what it reports.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::files::random_hex;
use super::tokens::{Object, Token, ec_spki, parse_objects};
use super::{fail, key_id};
use crate::error::Error;
use crate::schema::{Key, KeyAlgorithm};

#[derive(Debug)]
pub(super) struct Tools {
    /// Absolute path of the SoftHSM2 config, given to every tool as `SOFTHSM2_CONF`.
    pub(super) conf: PathBuf,
}

impl Tools {
    pub(super) fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SOFTHSM2_CONF", &self.conf)
            .env("LC_ALL", "C")
            // Nothing may wait for a PIN on a terminal.
            .stdin(Stdio::null());
        cmd
    }

    /// `pkcs11-tool` logged in to `token`. The PIN goes on the command line: dev-only SoftHSM2
    /// provisioning, see the module documentation.
    pub(super) fn pkcs11_tool(&self, token: &Token) -> Command {
        let mut cmd = self.command("pkcs11-tool");
        cmd.arg("--module").arg(&token.module).args([
            "--token-label",
            &token.label,
            "--login",
            "--pin",
            token.pin(),
        ]);
        cmd
    }

    /// Labels of the initialised tokens, from `softhsm2-util --show-slots`.
    pub(super) fn token_labels(&self) -> Result<Vec<String>, Error> {
        let mut cmd = self.command("softhsm2-util");
        cmd.arg("--show-slots");
        let out = run(
            cmd,
            "listing SoftHSM2 tokens (`softhsm2-util --show-slots`)",
            &[],
        )?;
        let labels = parse_token_labels(&String::from_utf8_lossy(&out));
        for (i, l) in labels.iter().enumerate() {
            if labels[..i].contains(l) {
                return Err(fail(format!(
                    "two SoftHSM2 tokens are labelled {l} in {}; delete one",
                    self.conf.display()
                )));
            }
        }
        Ok(labels)
    }

    /// Initialises a free slot as `token`, with a random SO PIN that is thrown away.
    pub(super) fn init_token(&self, token: &Token) -> Result<(), Error> {
        let so_pin = random_hex(16)?;
        let mut cmd = self.command("softhsm2-util");
        cmd.args(["--init-token", "--free", "--label", &token.label])
            .args(["--so-pin", so_pin.as_str(), "--pin", token.pin()]);
        run(
            cmd,
            &format!(
                "creating {} (`softhsm2-util --init-token`)",
                token.describe()
            ),
            &[so_pin.as_str(), token.pin()],
        )?;
        Ok(())
    }

    pub(super) fn list_objects(&self, token: &Token) -> Result<Vec<Object>, Error> {
        let mut cmd = self.pkcs11_tool(token);
        cmd.arg("--list-objects");
        let out = run(
            cmd,
            &format!(
                "logging in to {} and listing its objects (`pkcs11-tool --list-objects`)",
                token.describe()
            ),
            &[token.pin()],
        )?;
        Ok(parse_objects(&String::from_utf8_lossy(&out)))
    }

    /// `openssl genpkey` into a new PKCS#8 PEM file of mode 0600.
    pub(super) fn generate(&self, key: &Key, pem: &Path) -> Result<(), Error> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(pem)
            .map_err(|e| fail(format!("cannot create {}: {e}", pem.display())))?;
        let mut cmd = self.command("openssl");
        cmd.arg("genpkey");
        match key.algorithm {
            KeyAlgorithm::EcdsaP256 => {
                cmd.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
            }
            KeyAlgorithm::EcdsaP384 => {
                cmd.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"])
            }
            KeyAlgorithm::Ed25519 => cmd.args(["-algorithm", "ED25519"]),
            alg => cmd.args(["-algorithm", "RSA", "-pkeyopt"]).arg(format!(
                "rsa_keygen_bits:{}",
                alg.rsa_bits().unwrap_or(2048)
            )),
        };
        cmd.arg("-out").arg(pem);
        run(
            cmd,
            &format!(
                "generating key `{}` ({}) with `openssl genpkey`",
                key.name,
                key.algorithm.as_str()
            ),
            &[],
        )?;
        Ok(())
    }

    /// DER SPKI of a private key file.
    pub(super) fn public_key_of(&self, pem: &Path) -> Result<Vec<u8>, Error> {
        let mut cmd = self.command("openssl");
        cmd.args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(pem);
        run(cmd, "extracting a public key (`openssl pkey -pubout`)", &[])
    }

    /// Imports the key pair in `pem` into `token` (private and public key objects).
    pub(super) fn import(&self, token: &Token, key: &Key, pem: &Path) -> Result<(), Error> {
        let id = hex::encode(key_id(&key.name));
        let mut cmd = self.command("softhsm2-util");
        cmd.arg("--import")
            .arg(pem)
            .args(["--token", &token.label, "--label", &key.label, "--id", &id])
            .args(["--pin", token.pin()]);
        run(
            cmd,
            &format!(
                "importing key `{}` into {} (`softhsm2-util --import`)",
                key.name,
                token.describe()
            ),
            &[token.pin()],
        )?;
        Ok(())
    }

    /// DER SPKI of the public key object `public` of `key` on `token`.
    pub(super) fn read_public_key(
        &self,
        token: &Token,
        key: &Key,
        public: &Object,
    ) -> Result<Vec<u8>, Error> {
        if key.algorithm.rsa_bits().is_none() {
            // pkcs11-tool 0.23's --read-object fails on P-384 ("cannot create EVP_PKEY"), on
            // softhsm2-util's raw Ed25519 point, and writes PEM for a wrapped one: build the
            // SPKI from CKA_EC_POINT (the curve was checked against CKA_EC_PARAMS).
            let point = public.ec_point.as_deref().unwrap_or_default();
            return ec_spki(key.algorithm, point).ok_or_else(|| {
                fail(format!(
                    "key `{}` on {}: unexpected CKA_EC_POINT {} for {}",
                    key.name,
                    token.describe(),
                    hex::encode(point),
                    key.algorithm.as_str()
                ))
            });
        }
        let mut cmd = self.pkcs11_tool(token);
        cmd.args(["--read-object", "--type", "pubkey", "--label", &key.label]);
        if let Some(id) = &public.id {
            cmd.args(["--id", id]);
        }
        let der = run(
            cmd,
            &format!(
                "reading the public key of `{}` from {} (`pkcs11-tool --read-object`)",
                key.name,
                token.describe()
            ),
            &[token.pin()],
        )?;
        if der.first() != Some(&0x30) {
            return Err(fail(format!(
                "key `{}` on {}: `pkcs11-tool --read-object` did not return a DER public key",
                key.name,
                token.describe()
            )));
        }
        Ok(der)
    }
}

/// Labels of initialised tokens in `softhsm2-util --show-slots` output.
pub(super) fn parse_token_labels(text: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut initialized = false;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            initialized = false; // `Slot N`
            continue;
        }
        let Some((name, value)) = line.trim_start().split_once(':') else {
            continue;
        };
        match name {
            "Initialized" => initialized = value.trim() == "yes",
            "Label" if initialized => labels.push(value.trim().to_owned()),
            _ => {}
        }
    }
    labels
}

/// Runs `cmd` and returns its stdout. On failure the error names `what`, the exit status and
/// the tool's output with every `secret` redacted; never the command line (it may hold a PIN).
pub(super) fn run(mut cmd: Command, what: &str, secrets: &[&str]) -> Result<Vec<u8>, Error> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| {
        let hint = match program.as_str() {
            "softhsm2-util" => " (apt-get install softhsm2)",
            "pkcs11-tool" => " (apt-get install opensc)",
            "openssl" => " (apt-get install openssl)",
            _ => "",
        };
        fail(format!("{what}: cannot run {program}: {e}{hint}"))
    })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let mut text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() && out.stdout.len() < 4096 {
        if !text.is_empty() {
            text.push_str(" | ");
        }
        text.push_str(stdout.trim());
    }
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "<redacted>");
    }
    let text = text.replace('\n', " / ");
    let mut message = format!("{what} failed ({})", out.status);
    if !text.is_empty() {
        let _ = write!(message, ": {text}");
    }
    Err(fail(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_slots() {
        let text = "\
Available slots:
Slot 772146940
    Slot info:
        Token present:    yes
    Token info:
        Initialized:      yes
        User PIN init.:   yes
        Label:            EAST-1                          
Slot 2
    Token info:
        Initialized:      no
        Label:                                            
";
        assert_eq!(parse_token_labels(text), vec!["EAST-1".to_owned()]);
    }
}
