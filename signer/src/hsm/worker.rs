//! A worker thread: owns one session, takes jobs off its HSM's queue, signs.
//!
//! PKCS#11 calls block, so they run here and never on the async runtime; a `Session` is used by
//! this one thread only (it is `Send`, not `Sync`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crossbeam_channel::Receiver;
use cryptoki::context::Pkcs11;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki::slot::Slot;

use super::{Fault, Hsm, Job, JobFailure, JobResult, WorkerSlot, classify, lock};

pub(super) struct WorkerContext {
    pub hsm: Arc<Hsm>,
    pub generation: u64,
    pub pkcs11: Pkcs11,
    pub slot: Slot,
    pub rx: Receiver<Job>,
    pub keys: Arc<HashMap<Arc<str>, ObjectHandle>>,
    pub in_flight: Arc<AtomicUsize>,
    pub me: Arc<WorkerSlot>,
}

/// What the worker must do after a job.
enum After {
    Continue,
    /// The HSM is unusable: take it out of rotation.
    LeaveRotation(String),
}

pub(super) fn run(ctx: WorkerContext, mut session: Session) {
    // The queue closes when the HSM leaves rotation; then the thread ends.
    while let Ok(job) = ctx.rx.recv() {
        let n = job.items.len();
        let Job {
            key,
            operation,
            items,
            reply,
            deadline,
        } = job;
        // Nobody waits for it any more (cancelled RPC, or a sibling chunk failed): skip it.
        if reply.is_closed() {
            ctx.in_flight.fetch_sub(n, Ordering::Relaxed);
            continue;
        }
        if Instant::now() >= deadline {
            ctx.in_flight.fetch_sub(n, Ordering::Relaxed);
            let _ = reply.send(Err(JobFailure::Expired));
            continue;
        }
        // Park the reply where the watchdog can answer it if a call hangs, THEN check the
        // generation: `leave_rotation` bumps the generation before it empties the slots, so
        // either it finds this reply or this check sees the new generation.
        *lock(&ctx.me.reply) = Some(reply);
        if ctx.hsm.generation.load(Ordering::SeqCst) != ctx.generation {
            ctx.in_flight.fetch_sub(n, Ordering::Relaxed);
            if let Some(reply) = lock(&ctx.me.reply).take() {
                let _ = reply.send(Err(JobFailure::Retry(format!(
                    "HSM {} left rotation",
                    ctx.hsm.name
                ))));
            }
            continue;
        }
        let started = Instant::now();
        let (result, after) = sign_all(&ctx, &mut session, &key, operation, &items);
        ctx.in_flight.fetch_sub(n, Ordering::Relaxed);
        let reply = lock(&ctx.me.reply).take();
        // Failures were counted, by CKR code, where they happened.
        if result.is_ok() {
            ctx.hsm.metrics.signed(n as u64, started.elapsed());
            ctx.hsm.note_success();
        }
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
        if let After::LeaveRotation(reason) = after {
            ctx.hsm.leave_rotation(Some(ctx.generation), &reason);
            return;
        }
    }
}

fn sign_all(
    ctx: &WorkerContext,
    session: &mut Session,
    key: &str,
    operation: crate::algorithm::Operation,
    items: &[Vec<u8>],
) -> (JobResult, After) {
    let Some(&handle) = ctx.keys.get(key) else {
        return (
            Err(JobFailure::Retry(format!(
                "key `{key}` not in HSM {}",
                ctx.hsm.name
            ))),
            After::Continue,
        );
    };
    let mechanism = operation.mechanism();
    let mut signatures = Vec::with_capacity(items.len());
    for (index, data) in items.iter().enumerate() {
        let mut reopened = false;
        loop {
            ctx.me
                .busy_since_ms
                .store(ctx.hsm.now_ms(), Ordering::Relaxed);
            let result = session.sign(&mechanism, handle, data);
            ctx.me.busy_since_ms.store(0, Ordering::Relaxed);
            let e = match result {
                Ok(raw) => match operation.finish(raw) {
                    Ok(sig) => {
                        signatures.push(sig);
                        break;
                    }
                    Err(why) => {
                        ctx.hsm.metrics.error("MALFORMED_SIGNATURE");
                        let code = format!("malformed signature from the HSM: {why}");
                        ctx.hsm.note_transient(ctx.generation, &code);
                        return (Err(JobFailure::Transient(code)), After::Continue);
                    }
                },
                Err(e) => e,
            };
            let (fault, code) = classify(&e);
            ctx.hsm.metrics.error(&code);
            match fault {
                Fault::Session if !reopened => {
                    // A broken session: replace it and try this item once more.
                    reopened = true;
                    // Watched like a signature: opening and closing sessions can hang too.
                    ctx.me
                        .busy_since_ms
                        .store(ctx.hsm.now_ms(), Ordering::Relaxed);
                    match ctx.pkcs11.open_ro_session(ctx.slot) {
                        Ok(fresh) => {
                            tracing::info!(hsm = %ctx.hsm.name, "session replaced after {code}");
                            *session = fresh; // closes the broken one, still watched
                            ctx.me.busy_since_ms.store(0, Ordering::Relaxed);
                            continue;
                        }
                        Err(e2) => {
                            ctx.me.busy_since_ms.store(0, Ordering::Relaxed);
                            let (_, code2) = classify(&e2);
                            let reason = format!("{code}, then C_OpenSession: {code2}");
                            return (
                                Err(JobFailure::Retry(reason.clone())),
                                After::LeaveRotation(reason),
                            );
                        }
                    }
                }
                Fault::Session | Fault::Device => {
                    let reason = format!("C_Sign: {code}");
                    return (
                        Err(JobFailure::Retry(reason.clone())),
                        After::LeaveRotation(reason),
                    );
                }
                Fault::Request => {
                    return (Err(JobFailure::Refused { index, code }), After::Continue);
                }
                Fault::Transient => {
                    ctx.hsm.note_transient(ctx.generation, &code);
                    return (
                        Err(JobFailure::Transient(format!("C_Sign: {code}"))),
                        After::Continue,
                    );
                }
            }
        }
    }
    (Ok(signatures), After::Continue)
}
