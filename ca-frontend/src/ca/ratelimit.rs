//! Rate limits, counted from the CA's records (so they hold across restarts and, on PostgreSQL,
//! across frontends): new accounts per hour, new orders per account per hour, certificates per
//! registered domain (public suffix list + one label) per week. A request over a limit gets a
//! `rateLimited` problem with `Retry-After`.

use crate::config::Limits;
use crate::db::Db;
use crate::{Error, Problem, ProblemType};

const HOUR: i64 = 3600;
/// The window of the per-domain limit.
pub const WEEK: i64 = 7 * 24 * HOUR;

fn limited(detail: String, retry_after: i64) -> Error {
    Error::Problem(Problem {
        retry_after: Some(u64::try_from(retry_after).unwrap_or(60)),
        ..Problem::new(ProblemType::RateLimited, detail)
    })
}

pub async fn new_account(db: &dyn Db, limits: &Limits, now: i64) -> Result<(), Error> {
    let limit = u64::from(limits.accounts_per_hour);
    if db.accounts_since(now - HOUR, limit).await? >= limit {
        return Err(limited(
            format!("too many new accounts: the limit is {limit} an hour"),
            HOUR / 4,
        ));
    }
    Ok(())
}

pub async fn new_order(
    db: &dyn Db,
    limits: &Limits,
    account_id: &str,
    now: i64,
) -> Result<(), Error> {
    let limit = u64::from(limits.orders_per_account_per_hour);
    if db.orders_since(account_id, now - HOUR, limit).await? >= limit {
        return Err(limited(
            format!("too many new orders for this account: the limit is {limit} an hour"),
            HOUR / 4,
        ));
    }
    Ok(())
}

/// The registered domains (eTLD+1) that `names` count against, sorted and deduplicated.
pub fn registered_domains(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = names
        .iter()
        .map(|n| {
            let n = n.trim_start_matches("*.");
            psl::domain_str(n).unwrap_or(n).to_owned()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The registered domains a certificate for `names` is held to the weekly limit in. A renewal
/// is exempt (RFC 9773 §5 `replaces`; Let's Encrypt's "renewals are exempt"), but only for
/// what it renews: the names of the certificate it replaces. A name that certificate did not
/// have is a new certificate for its domain, so its domain counts; a renewal of the same set
/// of names counts against none.
pub fn counted_domains(names: &[String], replaced: Option<&[String]>) -> Vec<String> {
    let new_names: Vec<String> = match replaced {
        Some(old) => names.iter().filter(|n| !old.contains(n)).cloned().collect(),
        None => names.to_vec(),
    };
    registered_domains(&new_names)
}

/// The answer to a certificate over `domain`'s weekly allowance of `limit`.
pub fn domain_limited(domain: &str, limit: u64) -> Error {
    limited(
        format!("too many certificates for {domain}: the limit is {limit} a week"),
        HOUR,
    )
}

/// Checks the per-registered-domain limit for a certificate naming `names` (an early answer;
/// [`Db::begin_issuance`](crate::db::Db::begin_issuance) counts and reserves atomically).
pub async fn certificates(
    db: &dyn Db,
    limits: &Limits,
    domains: &[String],
    now: i64,
) -> Result<(), Error> {
    for domain in domains {
        let limit = u64::from(limits.certificates_per_domain_per_week);
        if db.certificates_since(domain, now - WEEK, limit).await? >= limit {
            return Err(domain_limited(domain, limit));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_count_against_their_registered_domain() {
        let names = [
            "a.example.com",
            "*.b.example.com",
            "example.co.uk",
            "x.example.co.uk",
        ]
        .map(String::from);
        assert_eq!(registered_domains(&names), ["example.co.uk", "example.com"]);
    }

    #[test]
    fn a_renewal_is_exempt_only_for_the_names_it_renews() {
        let old = ["a.example.com", "b.example.org"].map(String::from);
        let same = ["b.example.org", "a.example.com"].map(String::from);
        assert!(counted_domains(&same, Some(&old)).is_empty());
        // A name the replaced certificate did not have counts against its domain, even when
        // another name under that domain is renewed.
        let grown = ["a.example.com", "new.example.com", "b.example.org"].map(String::from);
        assert_eq!(counted_domains(&grown, Some(&old)), ["example.com"]);
        let narrowed = ["a.example.com"].map(String::from);
        assert!(counted_domains(&narrowed, Some(&old)).is_empty());
        assert_eq!(
            counted_domains(&grown, None),
            ["example.com", "example.org"]
        );
    }
}
