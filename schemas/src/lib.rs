//! The Avro contracts of the Si Twilio channel.
//!
//! Every topic value has an `.avsc` file under `schemas/avro/` and a typed Rust
//! record in [`records`]. [`codec`] frames them in the Confluent wire format
//! through a schema registry. Downstream teams read the `.avsc` files and
//! `schemas/CHANGELOG.md`; the Rust types must match them field for field,
//! which the tests in [`records`] check.

use apache_avro::Schema;
use serde::{Serialize, de::DeserializeOwned};

pub mod codec;
pub mod records;
pub mod registry;
pub mod topics;

pub use codec::{Codec, CodecError};
pub use registry::{Registry, RegistryConfig, RegistryError, value_subject};

/// A typed record with its Avro schema.
pub trait AvroRecord: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The `.avsc` text, exactly as committed under `schemas/avro/`.
    const SCHEMA_JSON: &'static str;
    /// The `.avsc` file name, for error messages and tooling.
    const SCHEMA_FILE: &'static str;

    /// The parsed schema (parsed once per process).
    fn schema() -> &'static Schema;

    /// A writer of this schema, its named types resolved once per process:
    /// serialises the record straight to Avro binary (no `Value` in between).
    fn datum_writer() -> &'static ::apache_avro::writer::datum::GenericDatumWriter<'static>;

    /// A reader of data written with exactly this schema, its named types
    /// resolved once per process: deserialises straight into the record.
    fn datum_reader() -> &'static ::apache_avro::reader::datum::GenericDatumReader<'static>;
}

/// Implements [`AvroRecord`] for a type from an `.avsc` file in `schemas/avro/`.
#[macro_export]
macro_rules! avro_record {
    ($ty:ty, $file:literal) => {
        impl $crate::AvroRecord for $ty {
            const SCHEMA_JSON: &'static str =
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/avro/", $file));
            const SCHEMA_FILE: &'static str = $file;

            fn schema() -> &'static ::apache_avro::Schema {
                static SCHEMA: ::std::sync::OnceLock<::apache_avro::Schema> =
                    ::std::sync::OnceLock::new();
                SCHEMA.get_or_init(|| {
                    ::apache_avro::Schema::parse_str(<Self as $crate::AvroRecord>::SCHEMA_JSON)
                        .expect(concat!("schemas/avro/", $file, " is valid Avro"))
                })
            }

            fn datum_writer() -> &'static ::apache_avro::writer::datum::GenericDatumWriter<'static>
            {
                static WRITER: ::std::sync::OnceLock<
                    ::apache_avro::writer::datum::GenericDatumWriter<'static>,
                > = ::std::sync::OnceLock::new();
                WRITER.get_or_init(|| {
                    ::apache_avro::writer::datum::GenericDatumWriter::builder(
                        <Self as $crate::AvroRecord>::schema(),
                    )
                    .build()
                    .expect(concat!("schemas/avro/", $file, " resolves"))
                })
            }

            fn datum_reader() -> &'static ::apache_avro::reader::datum::GenericDatumReader<'static>
            {
                static READER: ::std::sync::OnceLock<
                    ::apache_avro::reader::datum::GenericDatumReader<'static>,
                > = ::std::sync::OnceLock::new();
                READER.get_or_init(|| {
                    ::apache_avro::reader::datum::GenericDatumReader::builder(
                        <Self as $crate::AvroRecord>::schema(),
                    )
                    .build()
                    .expect(concat!("schemas/avro/", $file, " resolves"))
                })
            }
        }
    };
}

/// Parses an `.avsc` text, caching nothing (for tooling that reads files at run time).
///
/// # Errors
/// When the text is not a valid Avro schema.
pub fn parse_schema(text: &str) -> Result<Schema, apache_avro::Error> {
    Schema::parse_str(text)
}
