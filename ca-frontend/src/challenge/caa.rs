//! The CAA check before issuance (RFC 8659), with RFC 8657's `accounturi` and
//! `validationmethods` parameters binding issuance to one account and to validation methods.

use hickory_resolver::proto::rr::{RData, RecordType};

use crate::model::ChallengeType;
use crate::{Problem, ProblemType};

use super::{Validator, problem};

impl Validator {
    /// CAA (RFC 8659 §3): the relevant record set is the first non-empty one climbing from
    /// `domain` to the root; issuance is allowed if there is none or one of its `issue` (or, for
    /// a wildcard, `issuewild`) records names this CA and `requester` (RFC 8657). A DNS failure
    /// refuses issuance. For every name of an order, with the remote perspectives:
    /// [`crate::perspective::Corroborator::check_order_caa`].
    pub async fn check_caa(
        &self,
        domain: &str,
        wildcard: bool,
        requester: CaaRequester<'_>,
    ) -> Result<(), Problem> {
        let mut name = domain.trim_end_matches('.').to_ascii_lowercase();
        loop {
            let records = self.caa_records(&name).await?;
            if !records.is_empty() {
                return caa_allows(
                    &self.caa_identities,
                    domain,
                    &name,
                    &records,
                    wildcard,
                    requester,
                );
            }
            match name.split_once('.') {
                Some((_, parent)) if !parent.is_empty() => name = parent.to_owned(),
                _ => return Ok(()),
            }
        }
    }

    async fn caa_records(&self, name: &str) -> Result<Vec<CaaRecord>, Problem> {
        let query = format!("{name}.");
        match self
            .within_dns_budget(
                &query,
                self.resolver.lookup(query.as_str(), RecordType::CAA),
            )
            .await?
        {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::CAA(caa) => Some(CaaRecord {
                        critical: caa.issuer_critical,
                        tag: caa.tag.to_ascii_lowercase(),
                        value: caa.value.clone(),
                    }),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(vec![]),
            Err(e) => Err(problem(
                ProblemType::Dns,
                format!("CAA lookup of {name} failed, so issuance is refused: {e}"),
            )),
        }
    }
}

/// One CAA resource record (RFC 8659 §4.1): its issuer-critical flag, tag (lower case), value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaaRecord {
    pub critical: bool,
    pub tag: String,
    pub value: Vec<u8>,
}

/// Who asks for a certificate and how control was proved: what RFC 8657's `accounturi` and
/// `validationmethods` parameters restrict.
#[derive(Clone, Copy, Debug)]
pub struct CaaRequester<'a> {
    /// The ACME account URL (`https://…/acme/acct/ID`), compared exactly (RFC 8657 §3).
    pub account_uri: &'a str,
    /// The challenge that validated the name; its type is the method label (RFC 8657 §4).
    pub method: ChallengeType,
}

/// Whether the relevant record set `records` (found at `at`) lets the CA known by `identities`
/// issue for `domain` to `requester`. An `issue` value is parsed by hickory's RFC 8659 §4.2
/// grammar; one that does not parse authorizes nothing.
pub fn caa_allows(
    identities: &[String],
    domain: &str,
    at: &str,
    records: &[CaaRecord],
    wildcard: bool,
    requester: CaaRequester<'_>,
) -> Result<(), Problem> {
    use hickory_resolver::proto::rr::rdata::caa::read_issuer;
    if let Some(record) = records
        .iter()
        .find(|r| r.critical && !matches!(r.tag.as_str(), "issue" | "issuewild" | "iodef"))
    {
        return Err(problem(
            ProblemType::Caa,
            format!(
                "CAA at {at} has a critical `{}` record this CA does not understand",
                record.tag
            ),
        ));
    }
    let tag = if wildcard && records.iter().any(|r| r.tag == "issuewild") {
        "issuewild"
    } else {
        "issue"
    };
    let method = requester.method.as_str();
    // Why each record naming this CA still does not authorize the request.
    let mut refusals = Vec::new();
    for record in records.iter().filter(|r| r.tag == tag) {
        let shown = String::from_utf8_lossy(&record.value);
        let (issuer, parameters) = match read_issuer(&record.value) {
            Ok((Some(issuer), parameters)) => (issuer, parameters),
            // `issue ";"`: no CA may issue.
            Ok((None, _)) => continue,
            Err(e) => {
                refusals.push(format!("`{tag} \"{shown}\"` does not parse ({e})"));
                continue;
            }
        };
        let issuer = issuer.to_ascii().trim_end_matches('.').to_ascii_lowercase();
        if !identities.contains(&issuer) {
            continue;
        }
        let parameter = |key: &'static str| {
            parameters
                .iter()
                .filter(move |p| p.key().eq_ignore_ascii_case(key))
                .map(|p| p.value())
        };
        // RFC 8657 §3: "the CA MUST only issue if the ACME account URI matches".
        if let Some(other) = parameter("accounturi").find(|uri| *uri != requester.account_uri) {
            refusals.push(format!(
                "`{tag} \"{shown}\"` binds issuance to account {other}, not {}",
                requester.account_uri
            ));
            continue;
        }
        // RFC 8657 §4: only the listed validation methods may be used.
        if let Some(methods) =
            parameter("validationmethods").find(|list| !list.split(',').any(|m| m.trim() == method))
        {
            refusals.push(format!(
                "`{tag} \"{shown}\"` allows validation by {methods} only, and {domain} was validated by {method}"
            ));
            continue;
        }
        return Ok(());
    }
    let why = if refusals.is_empty() {
        format!("they do not name this CA ({})", identities.join(", "))
    } else {
        refusals.join("; ")
    };
    Err(problem(
        ProblemType::Caa,
        format!("CAA records at {at} do not allow this CA to issue for {domain}: {why}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "https://acme.test/acme/acct/mine";

    fn issue(value: &str) -> CaaRecord {
        CaaRecord {
            critical: false,
            tag: "issue".into(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn allows(records: &[CaaRecord], method: ChallengeType) -> Result<(), String> {
        let requester = CaaRequester {
            account_uri: ACCOUNT,
            method,
        };
        caa_allows(
            &["hsmgate.test".into()],
            "www.example.de",
            "example.de",
            records,
            false,
            requester,
        )
        .map_err(|p| {
            assert_eq!(p.kind, ProblemType::Caa);
            p.detail
        })
    }

    #[test]
    fn an_issue_record_naming_this_ca_allows() {
        assert_eq!(
            allows(&[issue("hsmgate.test")], ChallengeType::Http01),
            Ok(())
        );
        assert_eq!(
            allows(&[issue("HSMGATE.test; foo=bar")], ChallengeType::Dns01),
            Ok(())
        );
        // Another CA's record among ours does not matter; only another CA's does.
        assert_eq!(
            allows(
                &[issue("other.example"), issue("hsmgate.test")],
                ChallengeType::Http01
            ),
            Ok(())
        );
        assert!(allows(&[issue("other.example")], ChallengeType::Http01).is_err());
        assert!(allows(&[issue(";")], ChallengeType::Http01).is_err());
        assert!(allows(&[issue("hsmgate.test; bad param")], ChallengeType::Http01).is_err());
    }

    #[test]
    fn accounturi_binds_issuance_to_one_account() {
        let mine = issue(&format!("hsmgate.test; accounturi={ACCOUNT}"));
        assert_eq!(allows(&[mine], ChallengeType::Http01), Ok(()));
        let other = issue("hsmgate.test; accounturi=https://acme.test/acme/acct/other");
        let detail =
            allows(std::slice::from_ref(&other), ChallengeType::Http01).expect_err("other");
        assert!(detail.contains("acct/other"), "{detail}");
        // A record for the account beside one for another: the first authorizes.
        let mine = issue(&format!("hsmgate.test; accounturi={ACCOUNT}"));
        assert_eq!(allows(&[other, mine], ChallengeType::Http01), Ok(()));
    }

    #[test]
    fn validationmethods_restricts_the_challenge_types() {
        let dns_only = issue("hsmgate.test; validationmethods=dns-01");
        assert_eq!(
            allows(std::slice::from_ref(&dns_only), ChallengeType::Dns01),
            Ok(())
        );
        let detail = allows(&[dns_only], ChallengeType::Http01).expect_err("http-01");
        assert!(detail.contains("http-01"), "{detail}");
        let both = issue(&format!(
            "hsmgate.test; accounturi={ACCOUNT}; validationmethods=dns-01,http-01"
        ));
        assert_eq!(
            allows(std::slice::from_ref(&both), ChallengeType::Http01),
            Ok(())
        );
        assert!(allows(&[both], ChallengeType::TlsAlpn01).is_err());
    }
}
