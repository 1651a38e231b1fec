//! The server-side check of whoever a callback says clicked (docs/mattermost.md): with
//! `ICAHUB_MATTERMOST_URL` set, the user must exist, be active (`delete_at == 0`) and be a member
//! of the callback's channel. Answers are cached per (user, channel) for
//! `ICAHUB_MATTERMOST_CHECK_TTL_SECS` on the hub's clock, in at most [`MAX_ENTRIES`] entries;
//! failures to get an answer are never cached (and never pass).

use super::api::{MattermostApi, MmError};
use chrono::{DateTime, Duration, Utc};
use std::collections::HashMap;
use std::sync::Mutex;

/// At most this many (user, channel) answers are kept.
pub const MAX_ENTRIES: usize = 10_000;

/// What the server said about a user in a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Exists, active, a member of the channel.
    Member,
    UnknownUser,
    Deactivated,
    NotMember,
}

/// (user id, channel id)
type Key = (String, String);

/// Cached answers and until when each holds, keyed by (user id, channel id).
#[derive(Debug, Default)]
pub struct ClickerCache {
    entries: Mutex<HashMap<Key, (Standing, DateTime<Utc>)>>,
}

impl ClickerCache {
    fn get(&self, key: &Key, now: DateTime<Utc>) -> Option<Standing> {
        let map = self.entries.lock().ok()?;
        map.get(key)
            .filter(|(_, until)| now < *until)
            .map(|(s, _)| *s)
    }

    fn put(&self, key: Key, s: Standing, until: DateTime<Utc>, now: DateTime<Utc>) {
        let Ok(mut map) = self.entries.lock() else {
            return;
        };
        if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
            map.retain(|_, (_, u)| now < *u);
            if map.len() >= MAX_ENTRIES {
                // Still full of live answers: forget them all rather than grow (a later click
                // asks the server again; nothing is let through by forgetting).
                map.clear();
            }
        }
        map.insert(key, (s, until));
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The user's standing in the channel: cached when answered less than `ttl` ago, else asked
    /// (the user and the membership concurrently). `ttl` zero caches nothing.
    pub async fn standing(
        &self,
        api: &MattermostApi,
        user_id: &str,
        channel_id: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<Standing, MmError> {
        let key = (user_id.to_string(), channel_id.to_string());
        if let Some(s) = self.get(&key, now) {
            return Ok(s);
        }
        let (user, member) = tokio::join!(api.user(user_id), api.is_member(channel_id, user_id));
        let standing = match user? {
            None => Standing::UnknownUser,
            Some(u) if !u.active() => Standing::Deactivated,
            Some(_) if !member? => Standing::NotMember,
            Some(_) => Standing::Member,
        };
        if ttl > Duration::zero() {
            self.put(key, standing, now + ttl, now);
        }
        Ok(standing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_on_the_clock_and_the_cache_stays_bounded() {
        let c = ClickerCache::default();
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().expect("a date");
        let k = |i: usize| (format!("u{i}"), "c".to_string());
        c.put(k(0), Standing::Member, t0 + Duration::seconds(60), t0);
        assert_eq!(
            c.get(&k(0), t0 + Duration::seconds(59)),
            Some(Standing::Member)
        );
        assert_eq!(c.get(&k(0), t0 + Duration::seconds(60)), None);
        for i in 1..MAX_ENTRIES {
            c.put(k(i), Standing::NotMember, t0 + Duration::seconds(60), t0);
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        // Full of live answers: the next new key clears them rather than grow.
        c.put(
            k(MAX_ENTRIES),
            Standing::Member,
            t0 + Duration::seconds(60),
            t0,
        );
        assert_eq!(c.len(), 1);
        for i in 0..MAX_ENTRIES - 1 {
            c.put(k(i), Standing::NotMember, t0 + Duration::seconds(60), t0);
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        // Full, but expired: the expired ones go first.
        let later = t0 + Duration::seconds(61);
        c.put(
            k(999_999),
            Standing::Member,
            later + Duration::seconds(60),
            later,
        );
        assert_eq!(c.len(), 1);
    }
}
