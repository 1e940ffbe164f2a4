//! The rule that keeps publishing safe: which stored response a new one may replace. Every
//! store applies it atomically inside its `put` ([`crate::store`]), and the cache in front of a
//! store applies it too ([`crate::source`]).

use crate::record::{CertStatus, StoredResponse};

/// Whether `new` may replace `old`. Publishing is monotonic:
/// - a revocation is never replaced by a `good` response — not by a refresh that started
///   before the revocation, not after a crash;
/// - a revocation is never replaced by one with a different revocation time or reason (the
///   first recorded revocation stands);
/// - otherwise the newer response (by thisUpdate) wins; an equal thisUpdate with the same
///   status is an idempotent retry and may replace it.
pub fn may_replace(old: &StoredResponse, new: &StoredResponse) -> bool {
    match (old.status, new.status) {
        (CertStatus::Revoked { .. }, CertStatus::Good) => false,
        (CertStatus::Revoked { at: a, reason: r }, CertStatus::Revoked { at: b, reason: s }) => {
            a == b && r == s && new.this_update >= old.this_update
        }
        (CertStatus::Good, CertStatus::Revoked { .. }) => true,
        (CertStatus::Good, CertStatus::Good) => new.this_update >= old.this_update,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: CertStatus, this_update: i64) -> StoredResponse {
        StoredResponse {
            status,
            this_update,
            next_update: this_update + 86_400,
            der: vec![],
            http: Default::default(),
        }
    }

    #[test]
    fn a_revocation_is_never_replaced_by_good() {
        let revoked = resp(
            CertStatus::Revoked {
                at: 100,
                reason: Some(1),
            },
            100,
        );
        assert!(!may_replace(&revoked, &resp(CertStatus::Good, 1_000)));
        assert!(!may_replace(
            &revoked,
            &resp(
                CertStatus::Revoked {
                    at: 200,
                    reason: Some(1)
                },
                300
            )
        ));
        assert!(may_replace(
            &revoked,
            &resp(
                CertStatus::Revoked {
                    at: 100,
                    reason: Some(1)
                },
                300
            )
        ));
        assert!(!may_replace(
            &revoked,
            &resp(
                CertStatus::Revoked {
                    at: 100,
                    reason: Some(1)
                },
                50
            )
        ));
        assert!(may_replace(&resp(CertStatus::Good, 500), &revoked));
        assert!(!may_replace(
            &resp(CertStatus::Good, 500),
            &resp(CertStatus::Good, 400)
        ));
    }
}
