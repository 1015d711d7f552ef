//! Avro records as they arrive on every input topic: the Confluent frame,
//! then the datum decoded with each record type's schema.

use si_schemas::AvroRecord;
use si_schemas::codec::{decode_datum, encode_datum, frame, split_frame};
use si_schemas::records::{
    ArchivalRequest, CognitionResponse, Command, ComplianceEvent, ConsentProcessorState,
    ConsentState, ConversationEvent, DeadLetter, DeliveryStatus, EgressLedgerEntry, IdentityRecord,
    InboundMessage, LifecycleState, MediaState, NormalizeState, OutboundDeadLetter,
    OutboundOperation, ParticipantBinding, SegmentState, TranscriptEntry, TwilioWebhook,
    VoiceLinkState,
};

use crate::avro_gen::Generator;
use crate::engine::Target;
use crate::rng::Rng;

/// Decodes `datum` as `T`; when it decodes, it must no longer decode with its
/// last byte cut off, and it must encode again and decode back to the same
/// record.
///
/// Compared as JSON, not as bytes: apache-avro writes a map's entries in
/// `HashMap` order, so a record with two map entries can encode to different
/// bytes from one run to the next (same record once decoded). And as JSON
/// rather than with `==` so that a NaN double equals itself.
fn roundtrip<T: AvroRecord>(datum: &[u8]) -> bool {
    let Ok(record) = decode_datum::<T>(T::schema(), datum) else {
        return false;
    };
    if let Some((_, cut)) = datum.split_last() {
        assert!(
            decode_datum::<T>(T::schema(), cut).is_err(),
            "{}: decodes with its last byte cut off",
            T::SCHEMA_FILE
        );
    }
    let encoded = encode_datum(&record)
        .unwrap_or_else(|e| panic!("{}: decoded but does not encode: {e}", T::SCHEMA_FILE));
    let again: T = decode_datum(T::schema(), &encoded)
        .unwrap_or_else(|e| panic!("{}: own encoding does not decode: {e}", T::SCHEMA_FILE));
    assert_eq!(
        serde_json::to_value(&again).ok(),
        serde_json::to_value(&record).ok(),
        "{}: the record changed through its own encoding",
        T::SCHEMA_FILE
    );
    true
}

/// A record type: schema file, schema, round trip check, and decode-then-encode.
pub type AvroType = (
    &'static str,
    fn() -> &'static apache_avro::Schema,
    fn(&[u8]) -> bool,
    fn(&[u8]) -> Option<Vec<u8>>,
);

/// The datum decoded as `T` and encoded again by the project's encoder.
fn reencode<T: AvroRecord>(datum: &[u8]) -> Option<Vec<u8>> {
    let record = decode_datum::<T>(T::schema(), datum).ok()?;
    encode_datum(&record).ok()
}

macro_rules! types {
    ($($ty:ty),* $(,)?) => {
        /// Every record type: its schema file, its schema, and the round trip.
        pub const TYPES: &[AvroType] = &[
            $((<$ty as AvroRecord>::SCHEMA_FILE, <$ty as AvroRecord>::schema, roundtrip::<$ty>, reencode::<$ty>)),*
        ];
    };
}

types![
    TwilioWebhook,
    ConversationEvent,
    CognitionResponse,
    Command,
    OutboundOperation,
    DeliveryStatus,
    ConsentState,
    IdentityRecord,
    ParticipantBinding,
    EgressLedgerEntry,
    OutboundDeadLetter,
    DeadLetter,
    NormalizeState,
    ConsentProcessorState,
    SegmentState,
    LifecycleState,
    VoiceLinkState,
    MediaState,
    TranscriptEntry,
    ArchivalRequest,
    InboundMessage,
    ComplianceEvent,
];

/// Every input topic's records.
pub const RECORDS: Target = Target {
    name: "avro_records",
    about: "any bytes after the Confluent frame decode as each record type or fail with an error; what decodes re-encodes stably",
    run: records,
    dictionary: &[],
    generate: Some(generate),
    max_len: 8192,
};

fn records(data: &[u8]) {
    let Ok((_, datum)) = split_frame(data) else {
        assert!(
            data.len() < 5 || data[0] != 0,
            "a well-framed record was refused"
        );
        return;
    };
    for (_, _, roundtrip, _) in TYPES {
        roundtrip(datum);
    }
}

/// A valid datum of a random record type, framed.
pub fn generate(rng: &mut Rng) -> Vec<u8> {
    let (_, schema, _, _) = rng.pick(TYPES);
    let datum = Generator::new(schema()).datum(rng);
    frame(u32::try_from(rng.below(100)).unwrap_or(1), &datum)
}
