//! The hash algorithms a request's CertID may name its issuer by (RFC 6960 §4.1.1): SHA-1 for
//! RFC 5019 clients, SHA-256 for RFC 9919 ones. Its own module because the configuration, the
//! issuers, the stored responses' HTTP parts and the metrics all name them, and none of those
//! should depend on another for it.

/// Hash algorithms accepted in CertIDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    Sha1,
    Sha256,
}

impl HashAlg {
    /// Every algorithm, in the order responses list their SingleResponses (SHA-1 first, as
    /// before RFC 9919).
    pub const ALL: [HashAlg; 2] = [HashAlg::Sha1, HashAlg::Sha256];

    /// The name used in the configuration (`presigner.cert_id_hashes`) and in metric labels.
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha256 => "sha256",
        }
    }

    /// The algorithm a configuration name stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}
