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
//! # Timers
//!
//! An entry can carry one timer: a wall-clock time (ms since the epoch) at
//! which the runner calls the processor's
//! [`crate::processor::Processor::on_timer`] for that key. The timer is part of
//! the entry: it is written to the changelog with it (header `si-timer-at`),
//! restored with it, rolled back with it, and dropped when the entry is
//! deleted or swept. A timer remembers the trace context of the record
//! that set it (header `si-timer-trace`, a W3C `traceparent`), so what it
//! produces when it fires joins that record's trace. `put` keeps the entry's timer; [`StateStore::set_timer`]
//! and [`StateStore::cancel_timer`] change it. Set the entry's TTL beyond its
//! timer: an entry swept at its expiry takes its timer with it. See
//! [`crate::stream`] for when timers fire and why each fires exactly once.
//!
//! # Transactions
//!
//! Every change is recorded in an undo log until the runner commits. When a
//! transaction aborts, the runner rolls the store back to the last commit; when
//! a processor returns an error for one record, the runner rolls back that
//! record's changes only.
//!
//! # Memory
//!
//! A store keeps every value packed: as the bare Avro datum of its schema
//! (the changelog's own encoding, without the registry frame), which is
//! several times smaller than the decoded record with its `String`s, `Vec`s
//! and `Option`s. [`StateStore::get`] decodes a value the first time it is
//! read in a transaction and keeps the decoded copy until the transaction
//! ends (commit or rollback), so a processor pays one decode per key and
//! batch. Restoring copies the changelog's datum as it is when it was written
//! with the current schema (no decoding), and committing frames the packed
//! datum (no encoding). A slot of the map costs 64 bytes; keys are boxed
//! strings. See the README (Performance: state) for the figures.

use std::cell::{OnceCell, RefCell};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use si_schemas::AvroRecord;
use si_schemas::codec::{decode_datum, encode_datum};

/// Name of the changelog header carrying an entry's expiry (ms since the epoch, decimal).
pub const EXPIRES_AT_HEADER: &str = "si-expires-at";

/// Name of the changelog header carrying an entry's timer (ms since the epoch,
/// decimal); absent when the entry has no timer.
pub const TIMER_AT_HEADER: &str = "si-timer-at";

/// Name of the changelog header carrying the `traceparent` of the record
/// that set an entry's timer; absent when it had none.
pub const TIMER_TRACE_HEADER: &str = "si-timer-trace";

/// A value a [`StateStore`] can hold: it packs into bytes and back. Every
/// [`AvroRecord`] is one (packed as its bare Avro datum).
pub trait StateValue: Clone + Sized {
    /// The packed form.
    ///
    /// # Errors
    /// When the value does not fit its schema (a bug in the typed record).
    fn pack(&self) -> Result<Vec<u8>, String>;

    /// The value of a packed form.
    ///
    /// # Errors
    /// When the bytes are not a packed value of this type.
    fn unpack(bytes: &[u8]) -> Result<Self, String>;
}

impl<T: AvroRecord + Clone> StateValue for T {
    fn pack(&self) -> Result<Vec<u8>, String> {
        encode_datum(self).map_err(|e| e.to_string())
    }

    fn unpack(bytes: &[u8]) -> Result<Self, String> {
        decode_datum::<T>(T::schema(), bytes).map_err(|e| e.to_string())
    }
}

/// One entry in memory: the packed value, and its decoded form while a
/// transaction uses it.
#[derive(Debug, Clone)]
struct Entry<V> {
    /// The packed value; `None` only when packing failed (then `decoded` holds
    /// the value, and committing it fails as a record that does not encode).
    packed: Option<Box<[u8]>>,
    decoded: OnceCell<Box<V>>,
    expires_at: i64,
    timer_at: Option<i64>,
    timer_trace: Option<String>,
}

impl<V: StateValue> Entry<V> {
    fn new(value: V, expires_at: i64, timer_at: Option<i64>, timer_trace: Option<String>) -> Self {
        let packed = match value.pack() {
            Ok(bytes) => Some(bytes.into_boxed_slice()),
            Err(error) => {
                tracing::error!(%error, "a state value does not pack");
                None
            }
        };
        Self {
            packed,
            decoded: OnceCell::from(Box::new(value)),
            expires_at,
            timer_at,
            timer_trace,
        }
    }

    /// The value, decoded on first use.
    fn value(&self) -> Option<&V> {
        if let Some(value) = self.decoded.get() {
            return Some(value);
        }
        let packed = self.packed.as_deref()?;
        match V::unpack(packed) {
            Ok(value) => Some(self.decoded.get_or_init(|| Box::new(value))),
            Err(error) => {
                tracing::error!(%error, "a packed state value does not decode");
                None
            }
        }
    }
}

/// A stored entry as the changelog carries it: value, expiry, timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored<V> {
    /// The value.
    pub value: V,
    /// When the entry expires (ms since the epoch).
    pub expires_at: i64,
    /// When its timer fires (ms since the epoch), if it has one.
    pub timer_at: Option<i64>,
    /// The `traceparent` of the record that set the timer, if any.
    pub timer_trace: Option<String>,
}

/// The state of one input partition of a processor.
#[derive(Debug)]
pub struct StateStore<V> {
    /// Keys are boxed strings (no spare capacity, 16 bytes in the slot).
    entries: HashMap<Box<str>, Entry<V>>,
    /// Index of the entries' timers: (due time, key).
    timers: BTreeSet<(i64, Box<str>)>,
    /// Previous entries of every key changed since the last commit, oldest first.
    undo: Vec<(Box<str>, Option<Entry<V>>)>,
    /// Keys whose decoded value is held (dropped when the transaction ends).
    decoded: RefCell<Vec<Box<str>>>,
    now_ms: i64,
    default_ttl_ms: i64,
    /// The trace context of the record being processed (what a timer set now remembers).
    trace: Option<String>,
}

/// A change to write to the changelog: the key, and the entry (`None` for a delete).
pub type Change<V> = (String, Option<Stored<V>>);

/// A change as the runner writes it: the key, and the packed value with its
/// expiry and timer (`None` for a delete). The packed value is an error when
/// the value did not pack.
pub type PackedChange = (String, Option<Stored<Result<Vec<u8>, String>>>);

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl<V: StateValue> StateStore<V> {
    /// An empty store whose entries live `default_ttl` unless put with another TTL.
    #[must_use]
    pub fn new(default_ttl: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            timers: BTreeSet::new(),
            undo: Vec::new(),
            decoded: RefCell::new(Vec::new()),
            now_ms: 0,
            default_ttl_ms: millis(default_ttl),
            trace: None,
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

    /// Sets the trace context of the record being processed (the runner
    /// does this before each record): a timer set while it is processed
    /// remembers it.
    pub fn set_trace(&mut self, traceparent: Option<&str>) {
        self.trace = traceparent.map(str::to_owned);
    }

    /// The `traceparent` the timer of `key` remembers, if it has a timer.
    #[must_use]
    pub fn timer_trace(&self, key: &str) -> Option<&str> {
        self.entries
            .get(key)
            .filter(|e| e.timer_at.is_some())
            .and_then(|e| e.timer_trace.as_deref())
    }

    /// The live value of `key` (absent when missing or expired at [`Self::now`]).
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&V> {
        let (key, entry) = self.entries.get_key_value(key)?;
        if entry.expires_at <= self.now_ms {
            return None;
        }
        if entry.decoded.get().is_none() {
            self.decoded.borrow_mut().push(key.clone());
        }
        entry.value()
    }

    /// When the entry of `key` expires, if it exists.
    #[must_use]
    pub fn expires_at(&self, key: &str) -> Option<i64> {
        self.entries.get(key).map(|e| e.expires_at)
    }

    /// Stores `value` under `key`, living the default TTL from now.
    pub fn put(&mut self, key: impl Into<String>, value: V) {
        let expires_at = self.now_ms.saturating_add(self.default_ttl_ms);
        self.put_until(key.into().into_boxed_str(), value, expires_at);
    }

    /// Stores `value` under `key`, living `ttl` from now.
    pub fn put_with_ttl(&mut self, key: impl Into<String>, value: V, ttl: Duration) {
        let expires_at = self.now_ms.saturating_add(millis(ttl));
        self.put_until(key.into().into_boxed_str(), value, expires_at);
    }

    fn put_until(&mut self, key: Box<str>, value: V, expires_at: i64) {
        let (timer_at, timer_trace) = self
            .entries
            .get(&key)
            .map_or((None, None), |e| (e.timer_at, e.timer_trace.clone()));
        self.decoded.get_mut().push(key.clone());
        let old = self.replace(
            key.clone(),
            Some(Entry::new(value, expires_at, timer_at, timer_trace)),
        );
        self.undo.push((key, old));
    }

    /// Puts or removes the entry of `key`, keeping the timer index in step;
    /// returns the previous entry. Every change of `entries` goes through here.
    fn replace(&mut self, key: Box<str>, entry: Option<Entry<V>>) -> Option<Entry<V>> {
        let old = match entry {
            Some(entry) => {
                if let Some(at) = entry.timer_at {
                    self.timers.insert((at, key.clone()));
                }
                self.entries.insert(key.clone(), entry)
            }
            None => self.entries.remove(&key),
        };
        if let Some(at) = old.as_ref().and_then(|e| e.timer_at) {
            let still = self.entries.get(&key).and_then(|e| e.timer_at) == Some(at);
            if !still {
                self.timers.remove(&(at, key));
            }
        }
        old
    }

    /// Removes `key` (a tombstone in the changelog), with its timer.
    pub fn delete(&mut self, key: &str) {
        if self.entries.contains_key(key) {
            let key: Box<str> = key.into();
            let old = self.replace(key.clone(), None);
            self.undo.push((key, old));
        }
    }

    /// Changes the timer of the entry of `key`; false when there is no entry.
    fn retime(&mut self, key: &str, timer_at: Option<i64>) -> bool {
        let Some(entry) = self.entries.get(key) else {
            return false;
        };
        let mut entry = entry.clone();
        entry.timer_at = timer_at;
        entry.timer_trace = if timer_at.is_some() {
            self.trace.clone()
        } else {
            None
        };
        let key: Box<str> = key.into();
        if entry.decoded.get().is_some() {
            self.decoded.get_mut().push(key.clone());
        }
        let old = self.replace(key.clone(), Some(entry));
        self.undo.push((key, old));
        true
    }

    /// Sets the timer of `key` to fire at `at_ms` (wall clock, ms since the
    /// epoch), replacing an earlier one. Returns false, and sets nothing, when
    /// the key has no entry: a timer belongs to an entry.
    pub fn set_timer(&mut self, key: &str, at_ms: i64) -> bool {
        match self.entries.get(key) {
            None => false,
            Some(entry) if entry.timer_at == Some(at_ms) => true,
            Some(_) => self.retime(key, Some(at_ms)),
        }
    }

    /// Removes the timer of `key`; returns when it was due, if it had one.
    pub fn cancel_timer(&mut self, key: &str) -> Option<i64> {
        let at = self.entries.get(key)?.timer_at?;
        self.retime(key, None);
        Some(at)
    }

    /// When the timer of `key` fires, if it has one.
    #[must_use]
    pub fn timer(&self, key: &str) -> Option<i64> {
        self.entries.get(key).and_then(|e| e.timer_at)
    }

    /// The keys whose timers are due at `wall_now_ms`, earliest first, at most `limit`.
    #[must_use]
    pub fn due_timers(&self, wall_now_ms: i64, limit: usize) -> Vec<String> {
        self.timers
            .iter()
            .take_while(|(at, _)| *at <= wall_now_ms)
            .take(limit)
            .map(|(_, key)| key.to_string())
            .collect()
    }

    /// Number of timers set.
    #[must_use]
    pub fn timer_count(&self) -> usize {
        self.timers.len()
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

    /// Bytes of packed values held (keys and the map itself not counted).
    #[must_use]
    pub fn packed_bytes(&self) -> usize {
        self.entries
            .values()
            .map(|e| e.packed.as_ref().map_or(0, |p| p.len()))
            .sum()
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
            if old.as_ref().is_some_and(|e| e.decoded.get().is_some()) {
                self.decoded.get_mut().push(key.clone());
            }
            self.replace(key, old);
        }
        if savepoint == 0 {
            self.drop_decoded();
        }
    }

    /// Drops the decoded copies of packed values (the transaction ended).
    fn drop_decoded(&mut self) {
        for key in self.decoded.get_mut().drain(..) {
            if let Some(entry) = self.entries.get_mut(&key)
                && entry.packed.is_some()
            {
                entry.decoded.take();
            }
        }
    }

    /// The changelog writes for the changes since the last commit: the current
    /// entry of every changed key (a delete when it is gone), each key once.
    #[must_use]
    pub fn changes(&self) -> Vec<Change<V>> {
        self.changed()
            .map(|(key, entry)| {
                let current = entry.and_then(|e| {
                    e.value().map(|value| Stored {
                        value: value.clone(),
                        expires_at: e.expires_at,
                        timer_at: e.timer_at,
                        timer_trace: e.timer_trace.clone(),
                    })
                });
                (key.to_string(), current)
            })
            .collect()
    }

    /// [`Self::changes`] with packed values, as the runner writes them.
    #[must_use]
    pub fn packed_changes(&self) -> Vec<PackedChange> {
        self.changed()
            .map(|(key, entry)| {
                let current = entry.map(|e| Stored {
                    value: e
                        .packed
                        .as_ref()
                        .map(|p| p.to_vec())
                        .ok_or_else(|| "the value does not fit its schema".to_owned()),
                    expires_at: e.expires_at,
                    timer_at: e.timer_at,
                    timer_trace: e.timer_trace.clone(),
                });
                (key.to_string(), current)
            })
            .collect()
    }

    /// Every key changed since the last commit, once, with its current entry.
    fn changed(&self) -> impl Iterator<Item = (&str, Option<&Entry<V>>)> {
        let mut seen = HashSet::new();
        self.undo
            .iter()
            .filter(move |(key, _)| seen.insert(&**key))
            .map(|(key, _)| (&**key, self.entries.get(key)))
    }

    /// Forgets the undo log and the decoded copies: the changes are committed.
    pub(crate) fn commit(&mut self) {
        self.undo.clear();
        self.drop_decoded();
    }

    /// Whether some entry expired by `wall_now_ms`.
    #[must_use]
    pub fn has_expired(&self, wall_now_ms: i64) -> bool {
        self.entries.values().any(|e| e.expires_at <= wall_now_ms)
    }

    /// Deletes every entry that expired by `wall_now_ms` (each a tombstone in
    /// the changelog); returns how many.
    pub fn expire(&mut self, wall_now_ms: i64) -> usize {
        let expired: Vec<Box<str>> = self
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
    #[cfg(test)]
    pub(crate) fn restore(&mut self, key: String, value: Option<Stored<V>>) {
        let entry = value.map(|s| {
            let mut entry = Entry::new(s.value, s.expires_at, s.timer_at, s.timer_trace);
            if entry.packed.is_some() {
                entry.decoded.take();
            }
            entry
        });
        self.replace(key.into_boxed_str(), entry);
    }

    /// Applies one changelog record, its value already packed (the datum in
    /// `V`'s schema), during restore.
    pub(crate) fn restore_packed(&mut self, key: &[u8], value: Option<Stored<Vec<u8>>>) {
        let key: Box<str> = String::from_utf8_lossy(key).into();
        let entry = value.map(|s| Entry {
            packed: Some(s.value.into_boxed_slice()),
            decoded: OnceCell::new(),
            expires_at: s.expires_at,
            timer_at: s.timer_at,
            timer_trace: s.timer_trace,
        });
        self.replace(key, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    /// A value for the tests: a number, packed as its decimal text.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct N(i32);

    impl StateValue for N {
        /// Negative numbers do not pack (a record that does not fit its schema).
        fn pack(&self) -> Result<Vec<u8>, String> {
            if self.0 < 0 {
                return Err("negative".into());
            }
            Ok(self.0.to_string().into_bytes())
        }

        fn unpack(bytes: &[u8]) -> Result<Self, String> {
            std::str::from_utf8(bytes)
                .ok()
                .and_then(|s| s.parse().ok())
                .map(N)
                .ok_or_else(|| "not a number".to_owned())
        }
    }

    fn is_decoded(store: &StateStore<N>, key: &str) -> bool {
        store.entries[key].decoded.get().is_some()
    }

    #[test]
    fn values_stay_packed_and_are_decoded_once_per_transaction() {
        let mut store = StateStore::new(HOUR);
        store.put("a", N(12));
        store.commit();
        assert!(!is_decoded(&store, "a"), "packed only, once committed");
        assert_eq!(store.packed_bytes(), 2);
        assert_eq!(store.get("a"), Some(&N(12)));
        assert!(
            is_decoded(&store, "a"),
            "decoded while the transaction uses it"
        );
        store.commit();
        assert!(!is_decoded(&store, "a"));
        assert_eq!(store.get("a"), Some(&N(12)));
        store.put("a", N(13));
        store.rollback_to(0);
        assert!(
            !is_decoded(&store, "a"),
            "an abort drops the decoded copies too"
        );
        assert_eq!(store.get("a"), Some(&N(12)));
        store.set_timer("a", 5);
        store.commit();
        assert!(!is_decoded(&store, "a"));
        assert_eq!(
            store.get("a"),
            Some(&N(12)),
            "a timer change keeps the value"
        );
    }

    #[test]
    fn packed_changes_restore_as_they_were_written() {
        let mut store = StateStore::new(HOUR);
        store.set_now(5);
        store.put("a", N(12));
        store.delete("missing");
        let changes = store.packed_changes();
        assert_eq!(changes.len(), 1);
        let (key, stored) = &changes[0];
        let stored = stored.clone().expect("a put");
        assert_eq!(stored.value, Ok(b"12".to_vec()));
        let mut restored: StateStore<N> = StateStore::new(HOUR);
        restored.restore_packed(
            key.as_bytes(),
            Some(Stored {
                value: stored.value.expect("packed"),
                expires_at: stored.expires_at,
                timer_at: stored.timer_at,
                timer_trace: None,
            }),
        );
        restored.set_now(5);
        assert_eq!(restored.get("a"), Some(&N(12)));
        assert_eq!(restored.expires_at("a"), Some(5 + 3_600_000));
        restored.restore_packed(b"a", None);
        assert!(restored.is_empty());
    }

    #[test]
    fn a_value_that_does_not_pack_fails_at_commit_not_at_put() {
        let mut store = StateStore::new(HOUR);
        store.put("bad", N(-1));
        assert_eq!(store.get("bad"), Some(&N(-1)), "still readable");
        store.commit();
        assert_eq!(
            store.get("bad"),
            Some(&N(-1)),
            "kept decoded: nothing to unpack"
        );
        store.put("bad", N(-2));
        let changes = store.packed_changes();
        assert!(changes[0].1.as_ref().is_some_and(|s| s.value.is_err()));
    }

    #[test]
    fn entries_expire_by_record_time() {
        let mut store = StateStore::new(HOUR);
        store.set_now(1_000);
        store.put("a", N(1));
        store.put_with_ttl("b", N(2), Duration::from_millis(10));
        assert_eq!(store.get("a"), Some(&N(1)));
        assert_eq!(store.get("b"), Some(&N(2)));
        store.set_now(1_010);
        assert_eq!(store.get("b"), None, "expired at its TTL");
        assert_eq!(store.get("a"), Some(&N(1)));
        store.set_now(1_000 + 3_600_000);
        assert_eq!(store.get("a"), None);
    }

    #[test]
    fn rollback_restores_earlier_values_and_deletes() {
        let mut store = StateStore::new(HOUR);
        store.put("a", N(1));
        store.put("b", N(2));
        store.commit();
        let sp = store.savepoint();
        store.put("a", N(10));
        store.put("a", N(11));
        store.delete("b");
        store.put("c", N(3));
        assert_eq!(store.changes().len(), 3);
        store.rollback_to(sp);
        assert_eq!(store.get("a"), Some(&N(1)));
        assert_eq!(store.get("b"), Some(&N(2)));
        assert_eq!(store.get("c"), None);
        assert!(!store.is_dirty());
    }

    #[test]
    fn partial_rollback_keeps_earlier_changes_of_the_batch() {
        let mut store = StateStore::new(HOUR);
        store.put("a", N(1));
        let sp = store.savepoint();
        store.put("a", N(2));
        store.put("b", N(3));
        store.rollback_to(sp);
        assert_eq!(store.get("a"), Some(&N(1)));
        assert_eq!(store.get("b"), None);
        let changes = store.changes();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0, "a");
        assert_eq!(changes[0].1.as_ref().map(|s| s.value.clone()), Some(N(1)));
    }

    #[test]
    fn changes_list_each_key_once_with_its_latest_value() {
        let mut store = StateStore::new(HOUR);
        store.set_now(5);
        store.put("a", N(1));
        store.put("a", N(2));
        store.put("b", N(1));
        store.delete("b");
        let changes = store.changes();
        assert_eq!(
            changes,
            vec![
                (
                    "a".to_owned(),
                    Some(Stored {
                        value: N(2),
                        expires_at: 5 + 3_600_000,
                        timer_at: None,
                        timer_trace: None,
                    })
                ),
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
        store.put("old", N(1));
        store.set_now(1_000);
        store.put("new", N(2));
        store.commit();
        assert!(store.has_expired(500));
        assert_eq!(store.expire(500), 1);
        assert_eq!(store.len(), 1);
        assert_eq!(store.changes(), vec![("old".to_owned(), None)]);
    }

    #[test]
    fn restore_applies_puts_and_tombstones_without_changes() {
        let mut store = StateStore::new(HOUR);
        let stored = |value| {
            Some(Stored {
                value,
                expires_at: i64::MAX,
                timer_at: None,
                timer_trace: None,
            })
        };
        store.restore("a".into(), stored(N(1)));
        store.restore("b".into(), stored(N(2)));
        store.restore("a".into(), None);
        assert_eq!(store.get("a"), None);
        assert_eq!(store.get("b"), Some(&N(2)));
        assert!(!store.is_dirty());
    }

    #[test]
    fn timers_belong_to_entries_and_survive_puts() {
        let mut store = StateStore::new(HOUR);
        assert!(!store.set_timer("a", 10), "no entry, no timer");
        store.put("a", N(1));
        assert!(store.set_timer("a", 10));
        store.put("a", N(2));
        assert_eq!(store.timer("a"), Some(10), "a put keeps the timer");
        store.put("b", N(1));
        store.set_timer("b", 5);
        assert_eq!(store.due_timers(9, 10), vec!["b".to_owned()]);
        assert_eq!(
            store.due_timers(10, 10),
            vec!["b".to_owned(), "a".to_owned()]
        );
        assert_eq!(store.due_timers(10, 1), vec!["b".to_owned()]);
        store.set_timer("b", 20);
        assert_eq!(store.due_timers(10, 10), vec!["a".to_owned()], "re-armed");
        assert_eq!(store.cancel_timer("a"), Some(10));
        assert_eq!(store.cancel_timer("a"), None);
        store.delete("b");
        assert!(store.due_timers(i64::MAX, 10).is_empty());
        assert_eq!(store.timer_count(), 0);
    }

    #[test]
    fn timer_changes_go_to_the_changelog_and_roll_back() {
        let mut store = StateStore::new(HOUR);
        store.put("a", N(1));
        store.set_timer("a", 100);
        store.commit();
        let sp = store.savepoint();
        assert_eq!(store.cancel_timer("a"), Some(100));
        assert_eq!(
            store.changes()[0].1.as_ref().map(|s| s.timer_at),
            Some(None)
        );
        store.rollback_to(sp);
        assert_eq!(
            store.timer("a"),
            Some(100),
            "an aborted firing leaves the timer set"
        );
        assert_eq!(store.due_timers(100, 10), vec!["a".to_owned()]);
        store.set_timer("a", 200);
        store.delete("a");
        store.rollback_to(sp);
        assert_eq!(store.due_timers(i64::MAX, 10), vec!["a".to_owned()]);
        assert_eq!(store.timer("a"), Some(100));
    }

    #[test]
    fn restore_brings_timers_back() {
        let mut store: StateStore<N> = StateStore::new(HOUR);
        store.restore(
            "a".into(),
            Some(Stored {
                value: N(1),
                expires_at: i64::MAX,
                timer_at: Some(7),
                timer_trace: None,
            }),
        );
        assert_eq!(store.due_timers(7, 10), vec!["a".to_owned()]);
        store.restore("a".into(), None);
        assert!(store.due_timers(i64::MAX, 10).is_empty());
    }

    #[test]
    fn a_timer_remembers_the_trace_of_the_record_that_set_it() {
        let mut store = StateStore::new(HOUR);
        store.set_trace(Some("00-first"));
        store.put("a", N(1));
        store.set_timer("a", 10);
        store.set_trace(Some("00-second"));
        store.put("a", N(2));
        assert_eq!(store.timer_trace("a"), Some("00-first"), "a put keeps it");
        store.set_timer("a", 20);
        assert_eq!(store.timer_trace("a"), Some("00-second"), "re-armed");
        assert_eq!(
            store.changes()[0]
                .1
                .as_ref()
                .and_then(|s| s.timer_trace.clone()),
            Some("00-second".to_owned())
        );
        store.cancel_timer("a");
        assert_eq!(store.timer_trace("a"), None);
        store.set_trace(None);
        store.set_timer("a", 30);
        assert_eq!(store.timer_trace("a"), None);
    }
}
