//! The gRPC API of the hsmgate signing gateway (`hsmgate.signer.v1`), generated from
//! `signer/proto/hsmgate/signer/v1/signer.proto`.
//!
//! Callers (the OCSP pre-signer, the ACME frontend, `hsm-bench`) depend on this crate alone:
//! it carries the client stubs and messages but no PKCS#11.

#![allow(missing_debug_implementations)] // generated code; its messages derive Debug already.

/// Generated messages, client and server for `hsmgate.signer.v1`.
pub mod v1 {
    #![allow(clippy::all)]
    tonic::include_proto!("hsmgate.signer.v1");

    /// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/signer_descriptor.bin"));
}
