//! Keyed processor state: an in-memory map per input partition, backed by a
//! compacted changelog topic.
//!
//! # Changelog layout
//!
//! Each stage has one changelog topic (`si.<stage>.state.v1`), compacted, with
//! exactly as many partitions as its input topics: the state of input
//! partition `p` is written to changelog partition `p` (explicit partition, not
//! hashed), so whoever owns input partition `p` restores changelog partition
//! `p` and nothing else. Record key: the store key (UTF-8). Value: the stage's
//! state record, Confluent-framed Avro like every other topic (so
//! `sictl tail` can read it). Header `si-expires-at`: the entry's expiry in ms
//! since the epoch. A delete is a tombstone. Changelog writes are part of the
//! same transaction as the outputs and offsets of the records that caused them,
//! so a restored store is exactly the state after the last committed offset.
//!
//! # Time and TTL
//!
//! Every entry expires: `put` stamps it with `now + ttl`. "Now" is the
//! timestamp of the record being processed ([`StateStore::now`]), so whether an
//! entry is visible to [`StateStore::get`] depends only on the input, and a
//! replay sees the same state. Separately, the runner sweeps entries whose
//! expiry has passed by the wall clock (`STATE_SWEEP_INTERVAL`), deletes them
//! and writes their tombstones, so memory and the changelog stay bounded.
//!
//! # Transactions
//!
//! Every change is recorded in an undo log until the runner commits. When a
//! transaction aborts, the runner rolls the store back to the last commit; when
//! a processor returns an error for one record, the runner rolls back that
//! record's changes only.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Name of the changelog header carrying an entry's expiry (ms since the epoch, decimal).
pub const EXPIRES_AT_HEADER: &str = "si-expires-at";

#[derive(Debug, Clone)]
struct Entry<V> {
    value: V,
    expires_at: i64,
}

/// The state of one input partition of a processor.
#[derive(Debug)]
pub struct StateStore<V> {
    entries: HashMap<String, Entry<V>>,
    /// Previous entries of every key changed since the last commit, oldest first.
    undo: Vec<(String, Option<Entry<V>>)>,
    now_ms: i64,
    default_ttl_ms: i64,
}

/// A change to write to the changelog: the key, and the value with its expiry
/// (`None` for a delete).
pub type Change<V> = (String, Option<(V, i64)>);

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl<V: Clone> StateStore<V> {
    /// An empty store whose entries live `default_ttl` unless put with another TTL.
    #[must_use]
    pub fn new(default_ttl: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            undo: Vec::new(),
            now_ms: 0,
            default_ttl_ms: millis(default_ttl),
        }
    }

    /// The current time of the store: the timestamp of the record being processed.
    #[must_use]
    pub fn now(&self) -> i64 {
        self.now_ms
    }

    /// Sets the store's time (the runner does this before each record; tests too).
    pub fn set_now(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
    }

    /// The live value of `key` (absent when missing or expired at [`Self::now`]).
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|e| e.expires_at > self.now_ms)
            .map(|e| &e.value)
    }

    /// When the entry of `key` expires, if it exists.
    #[must_use]
    pub fn expires_at(&self, key: &str) -> Option<i64> {
        self.entries.get(key).map(|e| e.expires_at)
    }

    /// Stores `value` under `key`, living the default TTL from now.
    pub fn put(&mut self, key: impl Into<String>, value: V) {
        let expires_at = self.now_ms.saturating_add(self.default_ttl_ms);
        self.put_until(key.into(), value, expires_at);
    }

    /// Stores `value` under `key`, living `ttl` from now.
    pub fn put_with_ttl(&mut self, key: impl Into<String>, value: V, ttl: Duration) {
        let expires_at = self.now_ms.saturating_add(millis(ttl));
        self.put_until(key.into(), value, expires_at);
    }

    fn put_until(&mut self, key: String, value: V, expires_at: i64) {
        let old = self
            .entries
            .insert(key.clone(), Entry { value, expires_at });
        self.undo.push((key, old));
    }

    /// Removes `key` (a tombstone in the changelog).
    pub fn delete(&mut self, key: &str) {
        if let Some(old) = self.entries.remove(key) {
            self.undo.push((key.to_owned(), Some(old)));
        }
    }

    /// Number of entries held (live or awaiting the sweep).
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store holds no entry.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether there are uncommitted changes.
    #[must_use]
    pub fn is_dirty(&self) -> bool {
        !self.undo.is_empty()
    }

    /// A point the store can be rolled back to.
    pub(crate) fn savepoint(&self) -> usize {
        self.undo.len()
    }

    /// Undoes every change made after `savepoint`.
    pub(crate) fn rollback_to(&mut self, savepoint: usize) {
        while self.undo.len() > savepoint {
            let Some((key, old)) = self.undo.pop() else {
                break;
            };
            match old {
                Some(entry) => {
                    self.entries.insert(key, entry);
                }
                None => {
                    self.entries.remove(&key);
                }
            }
        }
    }

    /// The changelog writes for the changes since the last commit: the current
    /// entry of every changed key (a delete when it is gone), each key once.
    #[must_use]
    pub fn changes(&self) -> Vec<Change<V>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (key, _) in &self.undo {
            if seen.insert(key.as_str()) {
                let current = self
                    .entries
                    .get(key)
                    .map(|e| (e.value.clone(), e.expires_at));
                out.push((key.clone(), current));
            }
        }
        out
    }

    /// Forgets the undo log: the changes are committed.
    pub(crate) fn commit(&mut self) {
        self.undo.clear();
    }

    /// Whether some entry expired by `wall_now_ms`.
    #[must_use]
    pub fn has_expired(&self, wall_now_ms: i64) -> bool {
        self.entries.values().any(|e| e.expires_at <= wall_now_ms)
    }

    /// Deletes every entry that expired by `wall_now_ms` (each a tombstone in
    /// the changelog); returns how many.
    pub fn expire(&mut self, wall_now_ms: i64) -> usize {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires_at <= wall_now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &expired {
            self.delete(key);
        }
        expired.len()
    }

    /// Applies one changelog record during restore (no undo, no changelog write).
    pub(crate) fn restore(&mut self, key: String, value: Option<(V, i64)>) {
        match value {
            Some((value, expires_at)) => {
                self.entries.insert(key, Entry { value, expires_at });
            }
            None => {
                self.entries.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn entries_expire_by_record_time() {
        let mut store = StateStore::new(HOUR);
        store.set_now(1_000);
        store.put("a", 1);
        store.put_with_ttl("b", 2, Duration::from_millis(10));
        assert_eq!(store.get("a"), Some(&1));
        assert_eq!(store.get("b"), Some(&2));
        store.set_now(1_010);
        assert_eq!(store.get("b"), None, "expired at its TTL");
        assert_eq!(store.get("a"), Some(&1));
        store.set_now(1_000 + 3_600_000);
        assert_eq!(store.get("a"), None);
    }

    #[test]
    fn rollback_restores_earlier_values_and_deletes() {
        let mut store = StateStore::new(HOUR);
        store.put("a", 1);
        store.put("b", 2);
        store.commit();
        let sp = store.savepoint();
        store.put("a", 10);
        store.put("a", 11);
        store.delete("b");
        store.put("c", 3);
        assert_eq!(store.changes().len(), 3);
        store.rollback_to(sp);
        assert_eq!(store.get("a"), Some(&1));
        assert_eq!(store.get("b"), Some(&2));
        assert_eq!(store.get("c"), None);
        assert!(!store.is_dirty());
    }

    #[test]
    fn partial_rollback_keeps_earlier_changes_of_the_batch() {
        let mut store = StateStore::new(HOUR);
        store.put("a", 1);
        let sp = store.savepoint();
        store.put("a", 2);
        store.put("b", 3);
        store.rollback_to(sp);
        assert_eq!(store.get("a"), Some(&1));
        assert_eq!(store.get("b"), None);
        let changes = store.changes();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0, "a");
        assert_eq!(changes[0].1.as_ref().map(|(v, _)| *v), Some(1));
    }

    #[test]
    fn changes_list_each_key_once_with_its_latest_value() {
        let mut store = StateStore::new(HOUR);
        store.set_now(5);
        store.put("a", 1);
        store.put("a", 2);
        store.put("b", 1);
        store.delete("b");
        let changes = store.changes();
        assert_eq!(
            changes,
            vec![
                ("a".to_owned(), Some((2, 5 + 3_600_000))),
                ("b".to_owned(), None)
            ]
        );
        store.commit();
        assert!(store.changes().is_empty());
    }

    #[test]
    fn expiry_sweep_deletes_with_tombstones() {
        let mut store = StateStore::new(Duration::from_millis(100));
        store.set_now(0);
        store.put("old", 1);
        store.set_now(1_000);
        store.put("new", 2);
        store.commit();
        assert!(store.has_expired(500));
        assert_eq!(store.expire(500), 1);
        assert_eq!(store.len(), 1);
        assert_eq!(store.changes(), vec![("old".to_owned(), None)]);
    }

    #[test]
    fn restore_applies_puts_and_tombstones_without_changes() {
        let mut store = StateStore::new(HOUR);
        store.restore("a".into(), Some((1, i64::MAX)));
        store.restore("b".into(), Some((2, i64::MAX)));
        store.restore("a".into(), None);
        assert_eq!(store.get("a"), None);
        assert_eq!(store.get("b"), Some(&2));
        assert!(!store.is_dirty());
    }
}
