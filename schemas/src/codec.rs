//! Confluent-framed Avro: `0x00`, the 4-byte big-endian schema id, then the Avro datum.
//!
//! Encoding writes with the schema compiled into this binary and looks its id
//! up in the registry without registering it (like Confluent's serializers with
//! `auto.register.schemas=false`): schemas reach the registry only through
//! `sictl schemas register`, where compatibility is checked. Decoding fetches the
//! writer's schema by id (cached) and resolves it into the reader's compiled
//! schema, so records written with older or newer compatible schemas decode.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::{Schema, from_value};
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::avro_common::AvroSchema;

use crate::AvroRecord;
use crate::registry::{Registry, RegistryError, value_subject};

const MAGIC: u8 = 0;
const HEADER_LEN: usize = 5;

/// The most apache-avro may allocate for one string, byte array, array or map
/// while decoding: 4 MiB, twice the largest record any topic accepts
/// (`max.message.bytes`, 2 MiB on `si.deadletter.v1`).
///
/// apache-avro's own default is 512 MiB, and it believes a declared length
/// before it reads the data. A union or string read past the end of the data
/// is `null` to it rather than an error, so an array of records of nullable
/// fields (`MediaRef`) that claims 1.5 million items and then ends decodes
/// them all from nothing: an 87-byte `archival_request.avsc` record found by
/// the fuzzer (`fuzz/`, target `avro_records`) took 1.4 GB and seconds to
/// refuse, enough to get a stage OOM-killed on the same record again and
/// again instead of dead-lettering it.
pub const MAX_ALLOCATION_BYTES: usize = 4 * 1024 * 1024;

/// Sets apache-avro's allocation limit to [`MAX_ALLOCATION_BYTES`]. The limit
/// is process-wide and fixed by the first call (apache-avro's or ours), so
/// every encode and decode here calls this first.
pub fn limit_allocations() {
    static LIMIT: std::sync::Once = std::sync::Once::new();
    LIMIT.call_once(|| {
        let limit = apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
        if limit != MAX_ALLOCATION_BYTES {
            tracing::warn!(
                limit,
                "apache-avro's allocation limit was set before ours; decoding keeps that limit"
            );
        }
    });
}

/// Why a record could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not Confluent-framed Avro (wrong magic byte, too short).
    #[error("not Confluent-framed Avro: {0}")]
    Framing(String),
    /// The payload does not match its writer schema, or cannot be resolved into ours.
    #[error("Avro data does not fit the schema: {0}")]
    Avro(String),
    /// Our schema is not registered for the topic; run `sictl schemas register`.
    #[error(
        "schema {file} is not registered under subject {subject}; run `sictl schemas register`"
    )]
    NotRegistered {
        /// The subject looked up.
        subject: String,
        /// The schema file of the type.
        file: &'static str,
    },
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl CodecError {
    /// Whether trying again later may succeed. Malformed data never will: it belongs
    /// in a dead-letter topic. Registry trouble and missing registrations may.
    #[must_use]
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Framing(_) | Self::Avro(_) => false,
            Self::NotRegistered { .. } => true,
            Self::Registry(e) => e.retriable,
        }
    }
}

/// Splits a Confluent frame into the schema id and the Avro datum.
///
/// # Errors
/// When the bytes are too short or do not start with the magic byte.
pub fn split_frame(bytes: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::Framing(format!(
            "{} bytes, a frame needs at least {HEADER_LEN}",
            bytes.len()
        )));
    }
    if bytes[0] != MAGIC {
        return Err(CodecError::Framing(format!(
            "magic byte is {:#04x}, expected 0x00",
            bytes[0]
        )));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[HEADER_LEN..]))
}

/// Prefixes an Avro datum with the Confluent header.
#[must_use]
pub fn frame(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = header(id, datum.len());
    out.extend_from_slice(datum);
    out
}

/// The Confluent header, in a buffer with room for a datum of `datum_capacity`.
fn header(id: u32, datum_capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + datum_capacity);
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// Encodes a record as a bare Avro datum with its compiled schema (no registry).
///
/// The record is serialised straight to Avro binary by apache-avro's
/// schema-aware serializer with the type's cached writer
/// ([`AvroRecord::datum_writer`]): no `Value` tree and no name resolution per
/// record. `schemas/tests/records.rs` checks that this path and the `Value`
/// path read each other's bytes for every record type.
///
/// # Errors
/// When the record does not fit its schema (a bug in the typed record).
pub fn encode_datum<T: AvroRecord>(record: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(DATUM_CAPACITY);
    write_datum(&mut out, record)?;
    Ok(out)
}

/// What an encoding's buffer starts with: most of our records fit, so the
/// buffer is seldom grown, where one grown from empty would be reallocated
/// at every doubling on the way to the record's size.
const DATUM_CAPACITY: usize = 512;

/// Appends `record`'s Avro datum to `out`, as [`encode_datum`] encodes it.
fn write_datum<T: AvroRecord>(out: &mut Vec<u8>, record: &T) -> Result<(), CodecError> {
    limit_allocations();
    T::datum_writer()
        .write_ser(out, record)
        .map(|_| ())
        .map_err(|e| CodecError::Avro(format!("{}: {e}", T::SCHEMA_FILE)))
}

/// Decodes a bare Avro datum written with `writer` into `T`, resolving schemas.
///
/// A datum written with exactly `T`'s compiled schema (pointer-equal, as
/// [`Codec::decode`] passes it for our own schema ids) is deserialised
/// straight into `T` by the type's cached reader ([`AvroRecord::datum_reader`]);
/// any other writer schema goes through a `Value` resolved into `T`'s schema.
///
/// # Errors
/// When the datum does not match `writer` or cannot be resolved into `T`'s schema.
pub fn decode_datum<T: AvroRecord>(writer: &Schema, datum: &[u8]) -> Result<T, CodecError> {
    let reader = T::schema();
    if std::ptr::eq(writer, reader) {
        limit_allocations();
        let mut input = Bounded {
            rest: datum,
            overran: false,
        };
        let record = T::datum_reader()
            .read_deser::<T>(&mut input)
            .map_err(|e| CodecError::Avro(format!("{}: {e}", T::SCHEMA_FILE)))?;
        input.finished()?;
        return Ok(record);
    }
    let value = read_value(writer, Some(reader), datum)?;
    from_value::<T>(&value).map_err(|e| CodecError::Avro(format!("{}: {e}", T::SCHEMA_FILE)))
}

/// Reads one datum written with `writer`, resolved into `reader` when given.
fn read_value(writer: &Schema, reader: Option<&Schema>, datum: &[u8]) -> Result<Value, CodecError> {
    limit_allocations();
    let mut input = Bounded {
        rest: datum,
        overran: false,
    };
    let value = GenericDatumReader::builder(writer)
        .maybe_reader_schema(reader)
        .build()
        .and_then(|r| r.read_value(&mut input))
        .map_err(|e| CodecError::Avro(e.to_string()))?;
    input.finished()?;
    Ok(value)
}

/// A datum that remembers whether the decoder asked for more than it holds.
///
/// apache-avro decodes a union, or a string whose bytes are missing, at the
/// end of the data as `null` instead of failing, so a record cut short inside
/// its trailing nullable fields (where schema evolution adds them) decoded
/// with those fields `None` (found looking into the fuzzer's first finding,
/// [`MAX_ALLOCATION_BYTES`]). A complete datum never
/// needs a read past its end.
struct Bounded<'a> {
    rest: &'a [u8],
    overran: bool,
}

impl Bounded<'_> {
    /// The datum was read whole: nothing missing, nothing left over.
    fn finished(&self) -> Result<(), CodecError> {
        if self.overran {
            return Err(CodecError::Avro(
                "truncated: the datum ends inside a field".to_owned(),
            ));
        }
        if !self.rest.is_empty() {
            return Err(CodecError::Avro(format!(
                "{} bytes left after the datum",
                self.rest.len()
            )));
        }
        Ok(())
    }
}

impl std::io::Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.rest.read(buf)?;
        if n < buf.len() {
            self.overran = true;
        }
        Ok(n)
    }
}

/// Encodes and decodes typed records in the Confluent wire format.
///
/// Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Codec {
    registry: Registry,
    decoder: Arc<AvroDecoder>,
    /// Schema id of our compiled schema, per subject.
    ids: Arc<RwLock<HashMap<String, u32>>>,
    /// Whether a writer id's schema is exactly a type's compiled schema (then no resolution is needed).
    same_schema: Arc<RwLock<HashMap<(u32, &'static str), bool>>>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl Codec {
    /// A codec over `registry`.
    #[must_use]
    pub fn new(registry: Registry) -> Self {
        limit_allocations();
        let decoder = AvroDecoder::new(registry.settings().clone());
        Self {
            registry,
            decoder: Arc::new(decoder),
            ids: Arc::default(),
            same_schema: Arc::default(),
        }
    }

    /// The registry behind this codec.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The id under which `T`'s compiled schema is registered for `topic` (cached).
    ///
    /// # Errors
    /// [`CodecError::NotRegistered`] when it is not registered; registry errors.
    pub async fn schema_id<T: AvroRecord>(&self, topic: &str) -> Result<u32, CodecError> {
        let subject = value_subject(topic);
        if let Some(id) = self.read_ids().get(&subject) {
            return Ok(*id);
        }
        let id = self
            .registry
            .lookup(&subject, T::SCHEMA_JSON)
            .await?
            .ok_or_else(|| CodecError::NotRegistered {
                subject: subject.clone(),
                file: T::SCHEMA_FILE,
            })?;
        self.ids
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(subject, id);
        Ok(id)
    }

    fn read_ids(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, u32>> {
        self.ids
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Encodes `record` for `topic`.
    ///
    /// # Errors
    /// See [`Codec::schema_id`] and [`encode_datum`].
    pub async fn encode<T: AvroRecord>(
        &self,
        topic: &str,
        record: &T,
    ) -> Result<Vec<u8>, CodecError> {
        let id = self.schema_id::<T>(topic).await?;
        let mut out = header(id, DATUM_CAPACITY);
        write_datum(&mut out, record)?;
        Ok(out)
    }

    /// Decodes a Confluent-framed record into `T`.
    ///
    /// # Errors
    /// Framing and Avro errors (permanent), registry errors (maybe retriable).
    pub async fn decode<T: AvroRecord>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (id, datum) = split_frame(bytes)?;
        let writer = self.writer_schema(id).await?;
        if self.is_own_schema::<T>(id, &writer) {
            decode_datum::<T>(T::schema(), datum)
        } else {
            decode_datum::<T>(&writer.parsed, datum)
        }
    }

    /// The bare datum of a Confluent-framed record in `T`'s own schema, as
    /// [`encode_datum`] writes it: the framed datum itself when it was written
    /// with exactly that schema (no decoding at all), else decoded with its
    /// writer schema and encoded again. State stores keep their values so.
    ///
    /// # Errors
    /// Framing and Avro errors (permanent), registry errors (maybe retriable).
    pub async fn own_datum<T: AvroRecord>(&self, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        let (id, datum) = split_frame(bytes)?;
        let writer = self.writer_schema(id).await?;
        if self.is_own_schema::<T>(id, &writer) {
            // Not decoded: our own writer's bytes in our own schema (a datum
            // that would not decode is found by the store's decode on use).
            Ok(datum.to_vec())
        } else {
            encode_datum(&decode_datum::<T>(&writer.parsed, datum)?)
        }
    }

    /// Frames a bare datum of `T` (from [`encode_datum`]) for `topic`.
    ///
    /// # Errors
    /// See [`Codec::schema_id`].
    pub async fn frame_datum<T: AvroRecord>(
        &self,
        topic: &str,
        datum: &[u8],
    ) -> Result<Vec<u8>, CodecError> {
        let id = self.schema_id::<T>(topic).await?;
        Ok(frame(id, datum))
    }

    /// Whether the writer schema `id` is exactly `T`'s compiled schema (cached).
    fn is_own_schema<T: AvroRecord>(&self, id: u32, writer: &AvroSchema) -> bool {
        let key = (id, T::SCHEMA_FILE);
        let cached = self
            .same_schema
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .copied();
        if let Some(same) = cached {
            same
        } else {
            let same = writer.parsed.canonical_form() == T::schema().canonical_form();
            self.same_schema
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key, same);
            same
        }
    }

    /// Decodes a Confluent-framed record into a generic Avro value with its writer schema.
    ///
    /// # Errors
    /// Framing, Avro and registry errors.
    pub async fn decode_value(&self, bytes: &[u8]) -> Result<(Value, Arc<AvroSchema>), CodecError> {
        let (id, datum) = split_frame(bytes)?;
        let writer = self.writer_schema(id).await?;
        let value = read_value(&writer.parsed, None, datum)?;
        Ok((value, writer))
    }

    async fn writer_schema(&self, id: u32) -> Result<Arc<AvroSchema>, CodecError> {
        self.decoder.get_schema(id).await.map_err(|e| {
            CodecError::Registry(RegistryError {
                message: format!("fetching schema id {id}: {}", e.error),
                status: None,
                retriable: e.retriable,
            })
        })
    }
}

/// Converts a decoded Avro value to plain JSON (unions unwrapped, enums as strings,
/// bytes as UTF-8 when they are text, else base64-free arrays of numbers).
#[must_use]
pub fn value_to_json(value: Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Null => J::Null,
        Value::Boolean(b) => J::Bool(b),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => J::from(i),
        Value::Long(i)
        | Value::TimeMicros(i)
        | Value::TimestampMillis(i)
        | Value::TimestampMicros(i)
        | Value::TimestampNanos(i)
        | Value::LocalTimestampMillis(i)
        | Value::LocalTimestampMicros(i)
        | Value::LocalTimestampNanos(i) => J::from(i),
        Value::Float(f) => J::from(f),
        Value::Double(f) => J::from(f),
        Value::String(s) | Value::Enum(_, s) => J::String(s),
        Value::Bytes(b) | Value::Fixed(_, b) => match String::from_utf8(b) {
            Ok(text) => J::String(text),
            Err(e) => J::from(e.into_bytes()),
        },
        Value::Union(_, inner) => value_to_json(*inner),
        Value::Array(items) => J::Array(items.into_iter().map(value_to_json).collect()),
        Value::Map(map) => J::Object(
            map.into_iter()
                .map(|(k, v)| (k, value_to_json(v)))
                .collect(),
        ),
        Value::Record(fields) => J::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, value_to_json(v)))
                .collect(),
        ),
        Value::Uuid(u) => J::String(u.to_string()),
        other => J::String(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::records::{ArchivalRequest, TwilioWebhook, WebhookRoute};

    /// An `archival_request.avsc` datum whose `media` array claims 1.5 million
    /// items and then ends (the shape of the record the fuzzer found).
    fn endless_media() -> Vec<u8> {
        let mut datum = Vec::new();
        datum.extend_from_slice(b"\x02a\x02a\x02a"); // request_id, conversation_id, session_id
        datum.push(0x02); // closed_at 1
        datum.push(0x00); // reason: first symbol
        datum.push(0x00); // summary: null
        datum.extend_from_slice(b"\x02a"); // transcript_topic
        datum.extend_from_slice(&[0x00; 3]); // first_sequence, last_sequence, retention_class: null
        datum.push(0x02); // requested_at 1
        datum.push(0x00); // opened_at: null
        // media: a block of 1,500,000 items (zig-zag varint), then nothing.
        let mut n: u64 = 1_500_000 << 1;
        while n >= 0x80 {
            datum.push(u8::try_from(n & 0x7F).unwrap_or(0) | 0x80);
            n >>= 7;
        }
        datum.push(u8::try_from(n).unwrap_or(0));
        datum
    }

    #[test]
    fn a_truncated_record_is_refused() {
        let record = TwilioWebhook {
            webhook_id: "w".into(),
            received_at: 1,
            route: WebhookRoute::MessagingInbound,
            event_type: None,
            account_sid: None,
            resource_sid: None,
            idempotency_token: None,
            content_type: "c".into(),
            params: Vec::new(),
            body: None,
            query: None,
            headers: std::collections::BTreeMap::new(),
            conversation_hint: Some("CH1".into()),
            traceparent: Some("00-abc".into()),
        };
        let datum = encode_datum(&record).expect("encodes");
        assert_eq!(
            decode_datum::<TwilioWebhook>(TwilioWebhook::schema(), &datum).ok(),
            Some(record)
        );
        for cut in 1..datum.len() {
            let decoded =
                decode_datum::<TwilioWebhook>(TwilioWebhook::schema(), &datum[..datum.len() - cut]);
            assert!(decoded.is_err(), "{cut} bytes cut off: {decoded:?}");
        }
    }

    #[test]
    fn a_record_claiming_millions_of_items_is_refused_at_once() {
        let started = Instant::now();
        let decoded = decode_datum::<ArchivalRequest>(ArchivalRequest::schema(), &endless_media());
        assert!(decoded.is_err(), "{decoded:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(
            apache_avro::util::max_allocation_bytes(usize::MAX),
            MAX_ALLOCATION_BYTES
        );
    }
}
