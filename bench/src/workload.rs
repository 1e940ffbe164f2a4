//! What is signed: the key (from the configuration) and the inputs given to it.
//!
//! Both load generators sign the same thing the same way, so that their figures compare: for
//! a digest-signing key the gateway gets a random digest and the raw phase gives the HSM what
//! the gateway would give it for that digest (`CKM_ECDSA` on the digest itself; for RSA
//! PKCS#1 v1.5 the DigestInfo-prefixed digest under `CKM_RSA_PKCS`). Ed25519 signs a random
//! 32-byte message (`CKM_EDDSA`, pure). Inputs are random and generated before any phase, in a
//! pool that every worker walks through, so that no random generator runs while measuring.

use anyhow::{Context as _, Result, bail};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use hsm_config::{Config, KeyAlgorithm};
use hsmgate_signer_api::v1::sign_request::Input;

/// Distinct random inputs generated per run.
const POOL_SIZE: usize = 4096;

/// DER prefix of a PKCS#1 v1.5 DigestInfo for SHA-256 (RFC 8017, 9.2 note 1).
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// What the gateway is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// `SignRequest.digest`.
    Digest,
    /// `SignRequest.message`.
    Message,
}

/// The key under test and its inputs.
#[derive(Debug)]
pub struct Workload {
    /// Key name in the configuration and the signing API.
    pub key: String,
    /// `CKA_LABEL` of the key in the HSMs.
    pub label: String,
    pub algorithm: KeyAlgorithm,
    /// HSMs that hold the key, in configuration order.
    pub hsms: Vec<String>,
    pub kind: InputKind,
    /// Random inputs as sent to the gateway.
    pub inputs: InputPool,
    /// The same inputs as given to `C_Sign` in the raw phase.
    pub raw_inputs: InputPool,
}

impl Workload {
    /// The key `name` of `config`, with freshly generated random inputs.
    pub fn new(config: &Config, name: &str) -> Result<Self> {
        let Some(key) = config.key(name) else {
            let known: Vec<&str> = config.keys.iter().map(|k| k.name.as_str()).collect();
            bail!(
                "no key `{name}` in the configuration (keys: {})",
                known.join(", ")
            );
        };
        let (kind, len) = match key.algorithm {
            KeyAlgorithm::EcdsaP256 => (InputKind::Digest, 32),
            KeyAlgorithm::EcdsaP384 => (InputKind::Digest, 48),
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                (InputKind::Digest, 32)
            }
            KeyAlgorithm::Ed25519 => (InputKind::Message, 32),
        };
        let inputs = InputPool::random(len, POOL_SIZE)?;
        let raw_inputs = match key.algorithm.rsa_bits() {
            Some(_) => inputs.map(|d| [&SHA256_DIGEST_INFO[..], d].concat()),
            None => inputs.clone(),
        };
        Ok(Self {
            key: key.name.clone(),
            label: key.label.clone(),
            algorithm: key.algorithm,
            hsms: key.hsms.clone(),
            kind,
            inputs,
            raw_inputs,
        })
    }

    /// The `SignRequest.input` for gateway input number `i` (any `i`; the pool wraps).
    pub fn grpc_input(&self, i: usize) -> Input {
        let bytes = self.inputs.get(i).to_vec();
        match self.kind {
            InputKind::Digest => Input::Digest(bytes),
            InputKind::Message => Input::Message(bytes),
        }
    }

    /// One line describing what is signed, for reports.
    pub fn describe(&self) -> String {
        let what = match self.kind {
            InputKind::Digest => "digests",
            InputKind::Message => "messages",
        };
        format!(
            "{} ({}), random {}-byte {what}",
            self.key,
            self.algorithm.as_str(),
            self.inputs.len
        )
    }
}

/// The PKCS#11 mechanism the gateway uses for a key's default algorithm.
pub fn mechanism(algorithm: KeyAlgorithm) -> Mechanism<'static> {
    match algorithm {
        KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => Mechanism::Ecdsa,
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => Mechanism::RsaPkcs,
        KeyAlgorithm::Ed25519 => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
    }
}

/// Fixed-size byte strings in one allocation.
#[derive(Clone, Debug)]
pub struct InputPool {
    bytes: Vec<u8>,
    len: usize,
    count: usize,
}

impl InputPool {
    fn random(len: usize, count: usize) -> Result<Self> {
        let mut bytes = vec![0; len * count];
        getrandom::fill(&mut bytes).context("cannot get random bytes from the OS")?;
        Ok(Self { bytes, len, count })
    }

    fn map(&self, f: impl Fn(&[u8]) -> Vec<u8>) -> Self {
        let items: Vec<Vec<u8>> = (0..self.count).map(|i| f(self.get(i))).collect();
        let len = items.first().map_or(0, Vec::len);
        Self {
            bytes: items.concat(),
            len,
            count: self.count,
        }
    }

    /// Input number `i`, wrapping around the pool.
    pub fn get(&self, i: usize) -> &[u8] {
        let at = (i % self.count) * self.len;
        &self.bytes[at..at + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_wraps_and_maps() {
        let pool = InputPool::random(32, 4).expect("random");
        assert_eq!(pool.get(1), pool.get(5));
        assert_ne!(pool.get(0), pool.get(1));
        let prefixed = pool.map(|d| [&SHA256_DIGEST_INFO[..], d].concat());
        assert_eq!(prefixed.get(2).len(), 51);
        assert_eq!(&prefixed.get(2)[19..], pool.get(2));
    }
}
