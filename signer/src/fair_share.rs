//! Fair shares of HSM capacity between clients, and whole-call admission.
//!
//! The HSMs holding a key can have `max_in_flight` signatures each queued or in progress; a
//! [`CapacityPool`] is that capacity for one set of HSMs (keys on the same HSMs share one pool,
//! so a benchmark's key and the CA's issuing key on the same pair compete for the same thing).
//! A signing call reserves its items in the pool **before any of them is signed**: a call the
//! gateway will not serve is refused having spent no HSM signature.
//!
//! ```text
//!   call of n items ──▶ fits and nobody waits? ──yes──▶ reserved ──▶ chunks sign, each chunk
//!                            │ no                                      returns its items
//!                            ▼
//!        client's queue (≤ max_queued_signatures, else RESOURCE_EXHAUSTED at once)
//!                            │  capacity freed goes to the waiting client holding the
//!                            ▼  least capacity per unit of `share`; its oldest call first
//!                         reserved (or DEADLINE_EXCEEDED, having signed nothing)
//! ```
//!
//! Freed capacity is handed out by the pool, not raced for by the waiters: a client that keeps
//! thousands of signatures in flight cannot overtake one that holds none, and a large call at
//! the head of a client's queue is not starved by small ones behind it (the pool stops handing
//! out capacity until it fits). Because what is admitted never exceeds the capacity of the HSMs
//! in rotation, the dispatcher can place every admitted chunk; an HSM may briefly hold more than
//! its `max_in_flight` when chunks do not pack evenly, or when keys on overlapping (not equal)
//! HSM sets have separate pools, but never more than the pools admitted.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::Error;
use crate::hsm::Hsm;

/// How often a waiting call looks at the pool again even if nothing was released (an HSM
/// returning to rotation adds capacity without releasing any).
const RECHECK: Duration = Duration::from_millis(50);

/// Who asks for capacity, and on what terms.
#[derive(Clone, Copy, Debug)]
pub struct Claimant<'a> {
    pub client: &'a str,
    /// Weight when capacity is contended (`limits.share`, at least 1).
    pub share: u32,
    /// Most signatures this client may have waiting in this pool.
    pub max_queued: usize,
}

/// The signing capacity of one set of HSMs, shared fairly between clients.
#[derive(Debug)]
pub struct CapacityPool {
    hsms: Vec<Arc<Hsm>>,
    state: Mutex<State>,
    next_ticket: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Signatures reserved by admitted calls and not yet returned.
    in_use: usize,
    /// Calls waiting, over every client.
    waiting: usize,
    clients: HashMap<Arc<str>, Share>,
}

#[derive(Debug)]
struct Share {
    weight: u32,
    /// Signatures this client holds (admitted, not yet returned).
    held: usize,
    /// Signatures this client's waiting calls ask for.
    queued: usize,
    queue: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    ticket: u64,
    items: usize,
    granted: oneshot::Sender<usize>,
}

impl CapacityPool {
    pub fn new(hsms: Vec<Arc<Hsm>>) -> Arc<Self> {
        Arc::new(Self {
            hsms,
            state: Mutex::new(State::default()),
            next_ticket: AtomicU64::new(0),
        })
    }

    /// Whether this pool covers exactly `hsms` (the same HSM objects), for reuse on reload.
    pub fn covers(&self, hsms: &[Arc<Hsm>]) -> bool {
        self.hsms.len() == hsms.len()
            && hsms
                .iter()
                .all(|h| self.hsms.iter().any(|mine| Arc::ptr_eq(h, mine)))
    }

    /// Signatures the pool's HSMs in rotation can hold in flight now.
    pub fn capacity(&self) -> usize {
        self.hsms
            .iter()
            .filter(|h| h.in_rotation())
            .map(|h| h.definition.max_in_flight as usize)
            .sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `items` signatures for a call of `who`, waiting for capacity until `deadline`.
    /// With no HSM in rotation the call is let through holding nothing: the dispatcher then
    /// answers why it cannot sign (UNAVAILABLE), which waiting here could only hide.
    pub async fn reserve(
        self: &Arc<Self>,
        who: Claimant<'_>,
        items: usize,
        deadline: Instant,
    ) -> Result<Reservation, Error> {
        let (mut granted, ticket) = {
            let mut state = self.lock();
            let capacity = self.capacity();
            // A call larger than what is in rotation now (an HSM is out) waits for all of it.
            let need = items.min(capacity);
            if capacity == 0 {
                return Ok(self.granted(who.client, items, 0));
            }
            if state.waiting == 0 && state.in_use + need <= capacity {
                state.in_use += need;
                state.share(who).held += need;
                return Ok(self.granted(who.client, items, need));
            }
            let share = state.share(who);
            if share.queued + items > who.max_queued {
                return Err(Error::Saturated(format!(
                    "the HSMs are at capacity and client `{}` already has {} signature(s) waiting \
                     for them (limits.max_queued_signatures = {}); retry with backoff",
                    who.client, share.queued, who.max_queued
                )));
            }
            let (tx, rx) = oneshot::channel();
            let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
            share.queued += items;
            share.queue.push_back(Waiter {
                ticket,
                items,
                granted: tx,
            });
            state.waiting += 1;
            (rx, ticket)
        };
        loop {
            tokio::select! {
                held = &mut granted => {
                    // The sender is only dropped after a grant was sent or the waiter removed
                    // by this task: a closed channel cannot happen, but reads as "nothing held".
                    return Ok(self.granted(who.client, items, held.unwrap_or(0)));
                }
                () = tokio::time::sleep_until(deadline.into()) => {
                    return match self.withdraw(who.client, ticket) {
                        // Granted in the meantime: give it back.
                        None => {
                            let held = granted.try_recv().unwrap_or(0);
                            drop(self.granted(who.client, items, held));
                            Err(Error::DeadlineExceeded { attempts: 0 })
                        }
                        Some(()) => Err(Error::DeadlineExceeded { attempts: 0 }),
                    };
                }
                () = tokio::time::sleep(RECHECK) => self.hand_out(&mut self.lock()),
            }
        }
    }

    fn granted(self: &Arc<Self>, client: &str, items: usize, held: usize) -> Reservation {
        Reservation {
            pool: self.clone(),
            client: client.into(),
            whole: held == items,
            held: AtomicUsize::new(held),
        }
    }

    /// Takes a waiting call out of its client's queue; `None` if it is no longer there (it was
    /// granted).
    fn withdraw(&self, client: &str, ticket: u64) -> Option<()> {
        let mut state = self.lock();
        let share = state.clients.get_mut(client)?;
        let at = share.queue.iter().position(|w| w.ticket == ticket)?;
        let waiter = share.queue.remove(at)?;
        share.queued -= waiter.items;
        state.waiting -= 1;
        // A large call leaving the head may let smaller ones behind it through.
        self.hand_out(&mut state);
        Some(())
    }

    /// Returns `n` signatures of `client` to the pool and hands capacity to waiting calls.
    fn release(&self, client: &str, n: usize) {
        if n == 0 {
            return;
        }
        let mut state = self.lock();
        state.in_use = state.in_use.saturating_sub(n);
        if let Some(share) = state.clients.get_mut(client) {
            share.held = share.held.saturating_sub(n);
        }
        self.hand_out(&mut state);
    }

    /// Admits waiting calls while they fit, the client holding the least capacity per unit of
    /// share first (ties: the older call).
    fn hand_out(&self, state: &mut State) {
        while state.waiting > 0 {
            let capacity = self.capacity();
            let next = state
                .clients
                .iter()
                .filter_map(|(name, s)| s.queue.front().map(|w| (name, s, w.ticket)))
                .min_by(|(_, a, at), (_, b, bt)| {
                    // a.held / a.weight < b.held / b.weight, without division.
                    (a.held as u128 * u128::from(b.weight))
                        .cmp(&(b.held as u128 * u128::from(a.weight)))
                        .then(at.cmp(bt))
                })
                .map(|(name, _, _)| name.clone());
            let Some(name) = next else { break };
            let Some(share) = state.clients.get_mut(&name) else {
                break;
            };
            let Some(items) = share.queue.front().map(|w| w.items) else {
                break;
            };
            let need = items.min(capacity);
            if capacity > 0 && state.in_use + need > capacity {
                break;
            }
            let Some(waiter) = share.queue.pop_front() else {
                break;
            };
            share.queued -= waiter.items;
            state.waiting -= 1;
            if waiter.granted.send(need).is_ok() {
                share.held += need;
                state.in_use += need;
            }
        }
    }
}

impl State {
    fn share(&mut self, who: Claimant<'_>) -> &mut Share {
        let share = self
            .clients
            .entry(who.client.into())
            .or_insert_with(|| Share {
                weight: who.share.max(1),
                held: 0,
                queued: 0,
                queue: VecDeque::new(),
            });
        // A reload may have changed the client's share.
        share.weight = who.share.max(1);
        share
    }
}

/// A call's hold on pool capacity. Chunks return their part as they finish
/// ([`Reservation::finished`]); what is left returns when the reservation is dropped.
#[derive(Debug)]
pub struct Reservation {
    pool: Arc<CapacityPool>,
    client: Arc<str>,
    /// Whether the call holds one signature of capacity per item (not so when it was larger
    /// than the capacity in rotation): only then do chunks return theirs as they finish.
    whole: bool,
    /// Signatures of capacity still held.
    held: AtomicUsize,
}

impl Reservation {
    /// `n` of the call's items are done: their capacity goes back to the pool. When the call
    /// holds less than its items (it was larger than the capacity in rotation), everything is
    /// returned at the end instead.
    pub fn finished(&self, n: usize) {
        if !self.whole {
            return;
        }
        let mut taken = 0;
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                taken = n.min(held);
                Some(held - taken)
            });
        self.pool.release(&self.client, taken);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let rest = self.held.swap(0, Ordering::AcqRel);
        self.pool.release(&self.client, rest);
    }
}
