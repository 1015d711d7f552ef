//! `si.deadletter.v1`: `schemas/avro/dead_letter.avsc`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A record a stage could not decode or process, with where it came from and
/// why. The stage writes it (in the same transaction as its offsets) and
/// continues: bad input never stops the pipeline and is never dropped
/// silently. Keyed by the original record's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Stage that gave up: normalize, consent, segment, voice-link, lifecycle or egress.
    pub stage: String,
    /// Topic of the original record.
    pub source_topic: String,
    /// Partition of the original record.
    pub source_partition: i32,
    /// Offset of the original record.
    pub source_offset: i64,
    /// Human-readable error, without secrets and with addresses masked.
    pub reason: String,
    /// Class of the error.
    pub error_kind: DeadLetterErrorKind,
    /// The original key bytes, unchanged; `None` when the record had no key.
    #[serde(default, with = "apache_avro::serde::bytes_opt")]
    pub original_key: Option<Vec<u8>>,
    /// The original value bytes (Confluent framing included), unchanged; `None`
    /// for a tombstone.
    #[serde(default, with = "apache_avro::serde::bytes_opt")]
    pub original_value: Option<Vec<u8>>,
    /// The original record's Kafka headers, values decoded as UTF-8 (invalid
    /// bytes replaced); a repeated header keeps its last value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// When the stage dead-lettered the record (ms since the epoch).
    pub at: i64,
}

crate::avro_record!(DeadLetter, "dead_letter.avsc");

avro_enum! {
    /// Why a record was dead-lettered.
    pub enum DeadLetterErrorKind (default Unknown) {
        /// Not a Confluent-framed Avro record the stage can read (bad magic
        /// byte, unknown schema id, corrupt bytes).
        Undecodable = "UNDECODABLE",
        /// Decoded, but the writer schema does not resolve to the stage's reader schema.
        SchemaMismatch = "SCHEMA_MISMATCH",
        /// Decoded, but breaks the contract (a required value missing or malformed).
        Invalid = "INVALID",
        /// Valid, but processing failed permanently.
        ProcessingFailed = "PROCESSING_FAILED",
        /// A symbol newer than this build (the default).
        Unknown = "UNKNOWN",
    }
}
