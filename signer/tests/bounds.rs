//! What a hostile caller can make the gateway write and hold (issue 12, item 2), and the gRPC
//! reflection versions tools speak (issue 13), on the real `signer` process.
//!
//! The largest request message the gateway decodes is derived from `max_request_items`
//! (`service::max_message_bytes`: 8,192 items of 1 KiB in two-dc.toml); a refused call leaves
//! one summary audit record (counts and the SHA-256 of the request), never a line per item.

mod common;

use std::time::Duration;

use common::{Gateway, Module};
use hsmgate_signer_api::v1::{
    SignBatchRequest, SignRequest, SignatureAlgorithm as Alg, sign_request,
};
use prost::Message;
use sha2::Digest;
use tonic::Code;
use tonic::transport::Channel;

/// two-dc.toml's `max_request_items`, and the message limit the gateway derives from it.
const MAX_ITEMS: usize = 8_192;
const MAX_MESSAGE: usize = MAX_ITEMS * 1024;

fn item_for_x(n: u64) -> SignRequest {
    SignRequest {
        key: "x".into(),
        algorithm: Alg::Unspecified as i32,
        input: Some(sign_request::Input::Digest(common::digest_for(n, 32))),
    }
}

/// Bytes of records in the audit files (the file being written ends in preallocated zeros,
/// which are not records).
fn audit_bytes(gw: &Gateway) -> u64 {
    gw.audit_files()
        .iter()
        .map(|b| signer::audit_records_end(b) as u64)
        .sum()
}

/// VmRSS of the gateway, in KiB.
fn rss_kib(gw: &Gateway) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn the_largest_refused_message_writes_a_summary_and_holds_little() {
    let gw = Gateway::start(Module::SoftHsm);
    gw.wait_available("ca-p256", 4, Duration::from_secs(20))
        .await;
    let mut client = gw
        .client()
        .await
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);

    // As many 39-byte items naming key "x" as the largest message the gateway accepts holds.
    let count = MAX_MESSAGE / 39;
    let largest = SignBatchRequest {
        requests: (0..count as u64).map(item_for_x).collect(),
    };
    assert!(
        largest.encoded_len() <= MAX_MESSAGE,
        "{}",
        largest.encoded_len()
    );
    assert!(largest.encoded_len() > MAX_MESSAGE - 64);

    // Warm up (connections, allocator), then measure.
    let err = client
        .sign_batch(largest.clone())
        .await
        .expect_err("too many items");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let (rss_before, audit_before) = (rss_kib(&gw), audit_bytes(&gw));
    for _ in 0..5 {
        let err = client
            .sign_batch(largest.clone())
            .await
            .expect_err("too many items");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message()
                .contains(&format!("requests: {count} items, at most {MAX_ITEMS}")),
            "{}",
            err.message()
        );
    }
    // A full batch that passes the count but names an unknown key: refused before any HSM.
    let full = SignBatchRequest {
        requests: (0..MAX_ITEMS as u64).map(item_for_x).collect(),
    };
    let err = client
        .sign_batch(full.clone())
        .await
        .expect_err("unknown key");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Six refused calls of up to MAX_MESSAGE bytes: a few hundred bytes of audit log each.
    let grown = audit_bytes(&gw) - audit_before;
    assert!(grown <= 6 * 1024, "the audit log grew by {grown} bytes");
    let records = gw.audit_records();
    let last = records.last().expect("a record");
    assert_eq!(last["outcome"], "NotFound");
    assert_eq!(last["items"].as_array().map(Vec::len), Some(0), "{last}");
    assert_eq!(last["refused"]["items"], MAX_ITEMS as u64);
    assert_eq!(
        last["refused"]["request_sha256"],
        hex::encode(sha2::Sha256::digest(full.encode_to_vec())),
        "the digest of the request as sent"
    );
    let rss_after = rss_kib(&gw);
    assert!(
        rss_after < rss_before + 128 * 1024,
        "the gateway grew from {rss_before} KiB to {rss_after} KiB"
    );

    // One item more than the limit allows: refused by the gRPC layer before decoding.
    let mut over = largest;
    over.requests.extend((0..64).map(item_for_x));
    assert!(over.encoded_len() > MAX_MESSAGE);
    let err = client.sign_batch(over).await.expect_err("over the limit");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too large"), "{}", err.message());
    // And an item larger than any payload: refused; a unary call's record keeps its item.
    let big = SignRequest {
        key: "ca-p256".into(),
        algorithm: Alg::Unspecified as i32,
        input: Some(sign_request::Input::Message(vec![0x30; 17 << 10])),
    };
    let err = client.sign(big).await.expect_err("input too large");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("at most 16384"), "{}", err.message());
    let records = gw.audit_records();
    let last = records.last().expect("a record");
    assert_eq!(last["outcome"], "InvalidArgument", "{last}");
    assert_eq!(last["items"][0]["key"], "ca-p256", "{last}");
    assert!(last.get("refused").is_none_or(|r| r.is_null()), "{last}");
}

/// Issue 13: tools that speak `grpc.reflection.v1alpha` (grpcio-reflection's client, older
/// grpcurl) and those that speak `v1` both list the signing service.
#[tokio::test]
async fn reflection_answers_in_v1_and_v1alpha() {
    let gw = Gateway::start(Module::SoftHsm);
    let channel = Channel::from_shared(format!("http://{}", gw.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");

    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1alpha::{ServerReflectionRequest, ServerReflectionResponse};
        let mut client = ServerReflectionClient::new(channel.clone());
        let ask = |m| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        };
        let mut answers = client
            .server_reflection_info(tokio_stream_iter(vec![
                ask(MessageRequest::ListServices(String::new())),
                ask(MessageRequest::FileContainingSymbol(
                    "hsmgate.signer.v1.Signer".into(),
                )),
            ]))
            .await
            .expect("v1alpha reflection")
            .into_inner();
        let first: ServerReflectionResponse =
            answers.message().await.expect("answer").expect("one");
        let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("not a service list: {first:?}");
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"hsmgate.signer.v1.Signer"), "{names:?}");
        assert!(
            names.contains(&"grpc.reflection.v1alpha.ServerReflection"),
            "{names:?}"
        );
        let second = answers.message().await.expect("answer").expect("two");
        let Some(MessageResponse::FileDescriptorResponse(files)) = second.message_response else {
            panic!("not a file descriptor: {second:?}");
        };
        assert!(!files.file_descriptor_proto.is_empty());
    }
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel);
        let mut answers = client
            .server_reflection_info(tokio_stream_iter(vec![ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            }]))
            .await
            .expect("v1 reflection")
            .into_inner();
        let first = answers.message().await.expect("answer").expect("one");
        let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("not a service list: {first:?}");
        };
        assert!(
            list.service
                .iter()
                .any(|s| s.name == "hsmgate.signer.v1.Signer")
        );
    }
}

/// A finished stream of requests (tonic re-exports tokio-stream).
fn tokio_stream_iter<T>(
    items: Vec<T>,
) -> tonic::codegen::tokio_stream::Iter<std::vec::IntoIter<T>> {
    tonic::codegen::tokio_stream::iter(items)
}
