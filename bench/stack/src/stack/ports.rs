//! The ports a stack listens on (and the ports ACME validation connects to): the fixed ports of
//! the example configs for the dev stack, or free ephemeral ones so that a script or test can run
//! its own stack beside the dev stack and beside other tests.

use crate::challtestsrv::free_port;
use crate::error::Error;

/// Every port of one stack, on 127.0.0.1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ports {
    /// The gateway's gRPC (mTLS) and metrics listeners.
    pub gateway: u16,
    pub gateway_metrics: u16,
    /// The OCSP responder, which also serves the CRL shards, and its metrics.
    pub responder: u16,
    pub responder_metrics: u16,
    /// The ACME frontend and its metrics.
    pub acme: u16,
    pub acme_metrics: u16,
    /// The pre-signer's and the CRL updater's metrics.
    pub presign_metrics: u16,
    pub crl_metrics: u16,
    /// pebble-challtestsrv: the validation DNS (every name is 127.0.0.1) and its management API.
    pub dns: u16,
    pub dns_management: u16,
    /// Where ACME validation connects for http-01 and tls-alpn-01 (the clients listen there).
    pub http01: u16,
    pub tls_alpn01: u16,
    /// The three remote validation perspectives.
    pub perspectives: [u16; 3],
}

impl Ports {
    /// The ports of `hsm-config/examples/dev.toml`, `ocsp/examples/dev.toml`,
    /// `ca-frontend/examples/{dev,perspective}.toml`, as the README's commands use them.
    pub fn dev() -> Self {
        Self {
            gateway: 50051,
            gateway_metrics: 9464,
            responder: 8080,
            responder_metrics: 9465,
            acme: 4001,
            acme_metrics: 9466,
            presign_metrics: 9467,
            crl_metrics: 9468,
            dns: 8053,
            dns_management: 8055,
            http01: 5002,
            tls_alpn01: 5001,
            perspectives: [7101, 7102, 7103],
        }
    }

    /// A free ephemeral port for each, all different.
    pub fn ephemeral() -> Result<Self, Error> {
        Self::ephemeral_besides(&[])
    }

    /// [`Self::ephemeral`], none of them in `avoid` (a second instance beside a first).
    pub fn ephemeral_besides(avoid: &[u16]) -> Result<Self, Error> {
        let mut free = free_ports(15, avoid)?.into_iter();
        let mut next = || free.next().unwrap_or_default();
        Ok(Self {
            gateway: next(),
            gateway_metrics: next(),
            responder: next(),
            responder_metrics: next(),
            acme: next(),
            acme_metrics: next(),
            presign_metrics: next(),
            crl_metrics: next(),
            dns: next(),
            dns_management: next(),
            http01: next(),
            tls_alpn01: next(),
            perspectives: [next(), next(), next()],
        })
    }

    /// Every port, for choosing more that differ from them.
    pub fn all(&self) -> Vec<u16> {
        let mut all = vec![
            self.gateway,
            self.gateway_metrics,
            self.responder,
            self.responder_metrics,
            self.acme,
            self.acme_metrics,
            self.presign_metrics,
            self.crl_metrics,
            self.dns,
            self.dns_management,
            self.http01,
            self.tls_alpn01,
        ];
        all.extend(self.perspectives);
        all
    }
}

/// `count` free ephemeral ports, all different and none in `avoid` (asked of the kernel one by
/// one; another process could take one before the stack binds it, which the stack then
/// reports).
fn free_ports(count: usize, avoid: &[u16]) -> Result<Vec<u16>, Error> {
    let mut taken: Vec<u16> = Vec::with_capacity(count);
    while taken.len() < count {
        let port = free_port()?;
        if !taken.contains(&port) && !avoid.contains(&port) {
            taken.push(port);
        }
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_ports_are_distinct_and_not_the_dev_ports() {
        let ports = Ports::ephemeral().expect("free ports");
        let mut all = ports.all();
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count, "a port given twice: {ports:?}");
        assert_ne!(ports, Ports::dev());
    }
}
