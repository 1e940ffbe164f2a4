//! dns-01 (RFC 8555 §8.4): a TXT record at `_acme-challenge.{domain}` holding the base64url
//! SHA-256 digest of the key authorization. Not cached: a record set a moment ago must be seen.

use hickory_resolver::proto::rr::{RData, RecordType};
use sha2::{Digest, Sha256};

use crate::{Problem, ProblemType, b64};

use super::{Validator, problem};

impl Validator {
    pub(super) async fn dns01(&self, domain: &str, key_authorization: &str) -> Result<(), Problem> {
        let expected = b64(&Sha256::digest(key_authorization.as_bytes()));
        let name = format!("_acme-challenge.{domain}.");
        let lookup = self
            .within_dns_budget(&name, self.resolver.lookup(name.as_str(), RecordType::TXT))
            .await?
            .map_err(|e| problem(ProblemType::Dns, format!("TXT lookup of {name}: {e}")))?;
        let mut seen = 0;
        for record in lookup.answers() {
            if let RData::TXT(txt) = &record.data {
                seen += 1;
                let value: Vec<u8> = txt
                    .txt_data
                    .iter()
                    .flat_map(|s| s.iter().copied())
                    .collect();
                if value == expected.as_bytes() {
                    return Ok(());
                }
            }
        }
        Err(problem(
            ProblemType::Unauthorized,
            format!(
                "none of the {seen} TXT records at {name} is the expected digest of the key authorization"
            ),
        ))
    }
}
