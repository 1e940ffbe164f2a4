//! Responses built with a stand-in signature, for the store tests (`store_sqlite.rs`,
//! `store_redis.rs`): a store reads only which CertID hash a response's SingleResponse uses, so
//! the bytes need the structure of a signed response, not a real signature. Tests that check
//! signatures use the real gateway (`tests/common`).

use ocsp::{CertStatus, Error, Serial, StoredResponse};

/// The DER AlgorithmIdentifier of ecdsa-with-SHA256 (RFC 5758 §3.2: parameters absent), which
/// a stand-in signer answers with so that the response can be assembled around its bytes.
pub const ECDSA_WITH_SHA256: [u8; 12] = [
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];

/// Returns a fixed stand-in signature for every TBS.
#[derive(Debug)]
struct StandInSigner;

#[async_trait::async_trait]
impl ocsp::TbsSigner for StandInSigner {
    async fn sign(&self, _key: &str, tbs: Vec<Vec<u8>>) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error> {
        Ok(tbs
            .iter()
            .map(|_| (vec![0x30, 0x00], ECDSA_WITH_SHA256.to_vec()))
            .collect())
    }
}

/// A built `OCSPResponse` for `s` with a SingleResponse per hash of `hashes`.
pub async fn built(
    s: &Serial,
    status: CertStatus,
    this_update: i64,
    hashes: &[ocsp::HashAlg],
) -> StoredResponse {
    let issuer =
        ocsp::Issuer::new("test-ca", "k", include_bytes!("../data/ca.pem").as_slice()).unwrap();
    ocsp::sign_responses_with(
        &StandInSigner,
        &issuer,
        &ocsp::config::CertIdHashes::new(hashes).unwrap(),
        &[(s.clone(), status)],
        this_update,
        this_update + 86_400,
        this_update,
    )
    .await
    .unwrap()
    .remove(0)
}
