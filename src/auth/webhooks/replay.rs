//! The replay cache: which `webhook-id`s each sender had accepted lately, in this process.

use super::{SignatureRefusal, Signed};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;

/// The replay cache holds at most this many ids; past it, new signed requests get 503.
pub const REPLAY_CAPACITY: usize = 100_000;

/// The `webhook-id`s accepted in the last [`super::TOLERANCE`] window (and a bit), per sender, in this
/// process. An entry lives until a copy of its message could no longer pass the timestamp check,
/// so any replay within the window is caught, and memory stays bounded by [`REPLAY_CAPACITY`].
/// With several hub instances, a copy sent to another instance is not caught: the ids are not
/// shared (the domain's own duplicate checks still apply: a repeated alert is stored once).
pub struct ReplayCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    /// id → the senders that used it, with when each entry expires and the message's fingerprint.
    seen: HashMap<String, Vec<Seen>>,
    by_expiry: BinaryHeap<Reverse<(i64, String)>>,
    len: usize,
}

struct Seen {
    sender: usize,
    expires: i64,
    fingerprint: [u8; 32],
}

impl Default for ReplayCache {
    fn default() -> Self {
        ReplayCache::new(REPLAY_CAPACITY)
    }
}

impl ReplayCache {
    pub fn new(capacity: usize) -> ReplayCache {
        ReplayCache {
            inner: Mutex::new(Inner::default()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record `sender`'s `signed.id` as accepted: refused when the sender used that id within
    /// the window, or when the cache is full.
    pub fn claim(&self, sender: usize, signed: &Signed, now: i64) -> Result<(), SignatureRefusal> {
        let mut inner = self.lock();
        inner.expire(now);
        if inner
            .seen
            .get(&signed.id)
            .is_some_and(|v| v.iter().any(|s| s.sender == sender))
        {
            return Err(SignatureRefusal::Replayed(signed.id.clone()));
        }
        if inner.len >= self.capacity {
            return Err(SignatureRefusal::CacheFull);
        }
        let expires = signed.expires(now);
        inner.seen.entry(signed.id.clone()).or_default().push(Seen {
            sender,
            expires,
            fingerprint: signed.fingerprint(),
        });
        inner.by_expiry.push(Reverse((expires, signed.id.clone())));
        inner.len += 1;
        Ok(())
    }

    /// Forget the message with this id and fingerprint: the hub failed it (5xx), so the sender's
    /// retry, which keeps the id, must not be taken for a replay.
    pub fn release(&self, id: &str, fingerprint: &[u8; 32]) {
        let mut inner = self.lock();
        let Some(v) = inner.seen.get_mut(id) else {
            return;
        };
        let before = v.len();
        v.retain(|s| &s.fingerprint != fingerprint);
        let removed = before - v.len();
        if v.is_empty() {
            inner.seen.remove(id);
        }
        inner.len -= removed;
    }

    /// How many ids are held.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn expire(&mut self, now: i64) {
        while let Some(Reverse((at, _))) = self.by_expiry.peek() {
            // A copy stamped `ts` passes the time check until `ts + TOLERANCE` inclusive.
            if *at >= now {
                break;
            }
            let Some(Reverse((_, id))) = self.by_expiry.pop() else {
                break;
            };
            if let Some(v) = self.seen.get_mut(&id) {
                let before = v.len();
                v.retain(|s| s.expires >= now);
                let removed = before - v.len();
                if v.is_empty() {
                    self.seen.remove(&id);
                }
                self.len -= removed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        check_headers, fingerprint, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, TOLERANCE,
    };
    use super::*;
    use warp::http::{HeaderMap, HeaderValue};

    const TS: i64 = 1649367553;
    const SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            (ID_HEADER, id),
            (TIMESTAMP_HEADER, ts),
            (SIGNATURE_HEADER, sig),
        ] {
            h.insert(k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn signed(id: &str, ts: i64) -> Signed {
        check_headers(&headers(id, &ts.to_string(), SIG), ts).unwrap()
    }

    #[test]
    fn the_replay_cache_refuses_a_seen_id_until_it_expires() {
        let cache = ReplayCache::new(3);
        let m = signed("msg_1", TS);
        cache.claim(0, &m, TS).unwrap();
        assert_eq!(
            cache.claim(0, &m, TS + 1),
            Err(SignatureRefusal::Replayed("msg_1".into()))
        );
        // Another sender's ids are its own.
        cache.claim(1, &m, TS).unwrap();
        // Kept until a copy could no longer pass the timestamp check...
        let tol = TOLERANCE.as_secs() as i64;
        assert!(cache.claim(0, &m, TS + tol).is_err());
        // ...then forgotten.
        cache
            .claim(0, &signed("msg_1", TS + tol + 1), TS + tol + 1)
            .unwrap();
        assert_eq!(cache.len(), 1);
        // A future timestamp keeps its id longer.
        let ahead = signed("msg_2", TS + 2 * tol);
        cache.claim(0, &ahead, TS + tol + 1).unwrap();
        assert!(cache.claim(0, &ahead, TS + 3 * tol).is_err());
        assert!(cache.claim(0, &ahead, TS + 3 * tol + 1).is_ok());
    }

    #[test]
    fn the_replay_cache_is_bounded_and_releases_failed_messages() {
        let cache = ReplayCache::new(2);
        let (a, b, c) = (signed("a", TS), signed("b", TS), signed("c", TS));
        cache.claim(0, &a, TS).unwrap();
        cache.claim(0, &b, TS).unwrap();
        assert_eq!(cache.claim(0, &c, TS), Err(SignatureRefusal::CacheFull));
        // A replay is named as one even when the cache is full.
        assert!(matches!(
            cache.claim(0, &a, TS),
            Err(SignatureRefusal::Replayed(_))
        ));
        // Releasing needs the exact message.
        cache.release("a", &fingerprint("a", &TS.to_string(), "v1,other"));
        assert_eq!(cache.len(), 2);
        cache.release("a", &a.fingerprint());
        assert_eq!(cache.len(), 1);
        cache.claim(0, &a, TS).unwrap();
        // Expired entries make room.
        let later = TS + TOLERANCE.as_secs() as i64 + 1;
        cache.claim(0, &signed("c", later), later).unwrap();
        assert_eq!(cache.len(), 1);
    }
}
