//! The gRPC API of the hsmgate signing gateway (`hsmgate.signer.v1`), generated from
//! `signer/proto/hsmgate/signer/v1/signer.proto`.
//!
//! Callers (the OCSP pre-signer, the ACME frontend, `hsm-bench`) depend on this crate alone:
//! it carries the client stubs and messages but no PKCS#11, and [`client`], which turns an
//! endpoint URL and optional mTLS files into a tonic `Channel`, and [`BatchSigner`], the one
//! batching signing client (payload declaration, batches, a bound on calls in flight, retries
//! on another gateway, typed errors) they all sign through. [`http_listener`] is the
//! bounded HTTP server (timeouts, connection cap) that every hsmgate HTTP listener uses;
//! [`logging`] sets up every hsmgate process's log output (text or JSON lines).

#![allow(missing_debug_implementations)] // generated code; its messages derive Debug already.

pub use batch::{
    BatchSigner, DEFAULT_BATCH, DEFAULT_IN_FLIGHT, DEFAULT_TIMEOUT, Payload, PublicKey, SignError,
    SignQueue, Signature,
};

mod batch;
pub mod client;
pub mod http_listener;
pub mod logging;

/// gRPC metadata key by which a `Sign` or `SignBatch` call declares what its items are
/// (operation `sign-certificate`, `sign-ocsp` or `sign-crl` in the gateway's grants); absent, the
/// items are raw digests or messages (`sign-raw`). Values: [`PAYLOAD_TBS_CERTIFICATE`],
/// [`PAYLOAD_OCSP_RESPONSE_DATA`], [`PAYLOAD_TBS_CERT_LIST`]. Metadata rather than a message field so that the messages
/// callers build stay as they are; every item of a call has the declared type.
pub const PAYLOAD_HEADER: &str = "hsmgate-payload";
/// An X.509 `TBSCertificate` (RFC 5280 §4.1.1.1).
pub const PAYLOAD_TBS_CERTIFICATE: &str = "tbs-certificate";
/// An OCSP `ResponseData`, the `tbsResponseData` of a BasicOCSPResponse (RFC 6960 §4.2.1).
pub const PAYLOAD_OCSP_RESPONSE_DATA: &str = "ocsp-response-data";
/// A CRL's `TBSCertList` (RFC 5280 §5.1), operation `sign-crl`. Unlike the others it may be
/// large (a shard of a million entries is ~40 MB): the gateway takes up to its
/// `batching.max_crl_bytes` per item; send one per `Sign` call.
pub const PAYLOAD_TBS_CERT_LIST: &str = "tbs-cert-list";

/// Generated messages, client and server for `hsmgate.signer.v1`.
pub mod v1 {
    #![allow(clippy::all)]
    tonic::include_proto!("hsmgate.signer.v1");

    /// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/signer_descriptor.bin"));
}
