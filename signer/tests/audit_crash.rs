//! The audit log through a crash: the gateway is SIGKILLed while clients sign concurrently
//! (unary `Sign` and `SignBatch`, small audit files so that it rotates under load). Every
//! signature a client received must have its audit record (outcome OK, the SHA-256 of what was
//! signed), and the chain must verify with `signer audit verify` once a gateway has started on
//! the directory again (start-up cuts off a record torn by the kill, which was never
//! acknowledged) and extended it.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Gateway, Module, digest_for, digest_request, verify};
use hsmgate_signer_api::v1::{SignBatchRequest, SignatureAlgorithm as Alg};
use sha2::{Digest, Sha256};

const KEY: &str = "ca-p256";

fn audit_verify(dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_signer"))
        .args(["audit", "verify"])
        .arg(dir)
        .output()
        .expect("run signer audit verify");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// SHA-256 (hex) of every item of every audit record with outcome OK.
fn audited_ok(records: &[serde_json::Value]) -> HashSet<String> {
    records
        .iter()
        .filter(|r| r["outcome"] == "OK")
        .flat_map(|r| r["items"].as_array().cloned().unwrap_or_default())
        .filter_map(|i| i["sha256"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_signature_received_before_a_sigkill_is_in_the_verified_chain() {
    let first = Gateway::start_with(Module::SoftHsm, |c| c.audit.max_file_bytes = 16384);
    first.wait_available(KEY, 4, Duration::from_secs(20)).await;
    let audit_dir = first.audit_dir();

    // The SHA-256 of every digest whose signature came back (verified), shared by the tasks.
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for t in 0..24u64 {
        let mut client = first.client().await;
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let n = t * 1_000_000 + i;
                // Every fourth task sends batches of 8, the others unary calls.
                let digests: Vec<Vec<u8>> = if t % 4 == 0 {
                    (0..8).map(|j| digest_for(n * 8 + j, 32)).collect()
                } else {
                    vec![digest_for(n * 8, 32)]
                };
                let signatures = if digests.len() == 1 {
                    match client.sign(digest_request(KEY, digests[0].clone())).await {
                        Ok(r) => vec![r.into_inner().signature],
                        Err(_) => return,
                    }
                } else {
                    let requests = digests.iter().map(|d| digest_request(KEY, d.clone()));
                    let batch = SignBatchRequest {
                        requests: requests.collect(),
                    };
                    match client.sign_batch(batch).await {
                        Ok(r) => r
                            .into_inner()
                            .responses
                            .into_iter()
                            .map(|r| r.signature)
                            .collect(),
                        Err(_) => return,
                    }
                };
                assert_eq!(signatures.len(), digests.len());
                let mut got = received.lock().expect("lock");
                for (d, s) in digests.iter().zip(&signatures) {
                    verify(KEY, Alg::EcdsaSha256, d, s, true).expect("a valid signature");
                    got.push(hex::encode(Sha256::digest(d)));
                }
            }
        }));
    }
    // Kill it mid-stream, once enough signatures came back that files have rotated.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while received.lock().expect("lock").len() < 600 {
        assert!(
            std::time::Instant::now() < deadline,
            "too few signatures: {}",
            first.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.signal("KILL");
    for t in tasks {
        t.await.expect("a client task panicked");
    }
    let received = received.lock().expect("lock").clone();
    // The killed gateway's newest file ends in its preallocated zeros, unless the kill came
    // between cutting a finished file and starting the next, or the file filled up (files of
    // 16 KiB are preallocated up to their size): zeros there form its tail only. The files it
    // finished hold records only.
    let files = first.audit_files();
    assert!(
        files.len() > 1,
        "the log should have rotated under load: {} file(s)",
        files.len()
    );
    let (newest, finished) = files.split_last().expect("audit files");
    let end = signer::audit_records_end(newest);
    assert!(
        newest[end..].iter().all(|&b| b == 0),
        "the newest file holds zeros before a record"
    );
    assert!(
        finished.iter().all(|bytes| !bytes.contains(&0)),
        "a finished file kept zeros"
    );

    // Every signature received is in the log as signed, before any restart.
    let audited = audited_ok(&first.audit_records_lenient());
    let missing: Vec<&String> = received.iter().filter(|h| !audited.contains(*h)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} received signatures have no audit record (first: {})",
        missing.len(),
        received.len(),
        missing[0]
    );

    // A gateway on the same directory continues the chain; then it verifies end to end.
    let mut second = Gateway::start_with(Module::SoftHsm, |c| c.audit.dir = audit_dir.clone());
    second.wait_available(KEY, 1, Duration::from_secs(20)).await;
    let mut client = second.client().await;
    let after = digest_for(u64::MAX, 32);
    client
        .sign(digest_request(KEY, after.clone()))
        .await
        .expect("the restarted gateway signs");
    second.signal("TERM");
    assert_eq!(second.wait_exit(Duration::from_secs(15)), Some(0));
    // A clean stop cuts the preallocated tail: every file holds records only.
    assert!(
        second.audit_files().iter().all(|bytes| !bytes.contains(&0)),
        "a stopped gateway left zeros in its audit files"
    );
    let (ok, out) = audit_verify(&audit_dir);
    assert!(ok, "the chain does not verify after the crash: {out}");
    let records = first.audit_records();
    let audited = audited_ok(&records);
    assert!(audited.contains(&hex::encode(Sha256::digest(&after))));
    assert!(
        received.iter().all(|h| audited.contains(h)),
        "a received signature's record was lost at restart"
    );
    assert!(
        records.len() > received.len() / 8,
        "{} records",
        records.len()
    );
}
