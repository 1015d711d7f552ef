//! Typed Rust records for every topic value, field for field as in `schemas/avro/*.avsc`.
//!
//! One module per `.avsc` file (same name); types shared by several files (for
//! example [`Channel`] and [`MediaRef`]) live in `common` and are re-exported here
//! with everything else. The mapping between Avro and Rust is:
//!
//! | Avro | Rust |
//! |---|---|
//! | `["null", T]` with `"default": null` | `Option<T>` |
//! | `{"type":"long","logicalType":"timestamp-millis"}` | `i64`, milliseconds since the Unix epoch (UTC) |
//! | `int` / `long` / `double` / `boolean` / `string` | `i32` / `i64` / `f64` / `bool` / `String` |
//! | `bytes` | `Vec<u8>` with `#[serde(with = "apache_avro::serde::bytes_opt")]` (see below) |
//! | `array` | `Vec<T>` |
//! | `map` of `string` | `BTreeMap<String, String>` (sorted: deterministic output) |
//! | `enum` | a unit enum implementing [`AvroEnum`], one variant per symbol |
//!
//! `schemas/tests/records.rs` round-trips every type through its schema and
//! checks that the Rust enums carry exactly the schema's symbols.
//!
//! # Encoding and decoding
//!
//! With apache-avro, encode with `apache_avro::to_value(&record)` followed by
//! `Value::resolve(T::schema())` (the resolve step turns Rust unit variants, which
//! serialize as strings, into Avro enum values and picks union branches) and
//! decode by reading the datum with the **writer** schema (from the registry id)
//! and the compiled-in `T::schema()` as **reader** schema, then `from_value`.
//! Reading with the reader schema is what applies Avro's evolution rules (field
//! defaults, enum defaults), so a newer writer never breaks an older reader.
//! The enums additionally map unknown symbols to their default variant on
//! deserialization, so even a decode with the writer schema alone degrades to
//! the default (`UNKNOWN`) instead of failing.
//!
//! # Bytes
//!
//! Plain `Vec<u8>` serializes as an array of integers through serde, which does
//! not match an Avro `bytes` schema. Fields of Avro type `bytes` therefore use
//! apache-avro's own `serde_bytes`-style helpers (`apache_avro::serde::bytes_opt`).

use std::fmt;

use serde::de::{self, Deserializer, EnumAccess, VariantAccess, Visitor};

/// A Rust unit enum mirroring an Avro `enum` schema.
///
/// Serialization writes the Avro symbol. Deserialization accepts any symbol and
/// maps one this build does not know to [`AvroEnum::DEFAULT`], exactly as an
/// Avro reader maps an unknown symbol to the schema's `default`.
pub trait AvroEnum: Copy + Eq + fmt::Debug + fmt::Display + Sized + 'static {
    /// The Avro name without namespace, e.g. `Channel`.
    const AVRO_NAME: &'static str;
    /// Every variant, in the order of the schema's `symbols`.
    const ALL: &'static [Self];
    /// The variant of the schema's `default` symbol.
    const DEFAULT: Self;

    /// The Avro symbol of this variant, e.g. `WHATSAPP`.
    fn symbol(self) -> &'static str;

    /// The variant for an Avro symbol; `None` when this build does not know it.
    fn from_symbol(symbol: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.symbol() == symbol)
    }
}

/// Deserializes an enum symbol as a string, whichever way the deserializer
/// presents it (an Avro enum, an Avro/JSON string, a serde enum variant).
#[doc(hidden)]
pub fn deserialize_symbol<'de, D: Deserializer<'de>>(
    deserializer: D,
    name: &'static str,
    symbols: &'static [&'static str],
) -> Result<String, D::Error> {
    struct SymbolVisitor(&'static str);

    impl<'de> Visitor<'de> for SymbolVisitor {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a symbol of the Avro enum {}", self.0)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }

        fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<String, A::Error> {
            let (Symbol(symbol), variant) = data.variant()?;
            variant.unit_variant()?;
            Ok(symbol)
        }
    }

    /// A variant name, read the way serde's derived enums read it
    /// (`deserialize_identifier`, which apache-avro's schema-aware reader requires).
    struct Symbol(String);

    impl<'de> de::Deserialize<'de> for Symbol {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer
                .deserialize_identifier(SymbolVisitor(""))
                .map(Symbol)
        }
    }

    deserializer.deserialize_enum(name, symbols, SymbolVisitor(name))
}

/// Declares a unit enum mirroring an Avro enum: serde symbols, [`AvroEnum`],
/// `Default` (the schema default), `Display`/`FromStr` (the symbol), `as_str`.
macro_rules! avro_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident (default $default:ident) {
            $( $(#[$vmeta:meta])* $variant:ident = $symbol:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ::serde::Serialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $symbol)] $variant, )+
        }

        impl $name {
            /// The Avro symbol of this variant.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $symbol, )+
                }
            }
        }

        impl $crate::records::AvroEnum for $name {
            const AVRO_NAME: &'static str = stringify!($name);
            const ALL: &'static [Self] = &[$( Self::$variant, )+];
            const DEFAULT: Self = Self::$default;

            fn symbol(self) -> &'static str {
                self.as_str()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::$default
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::records::UnknownSymbol;

            /// Parses an exact Avro symbol (no fallback to the default).
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <Self as $crate::records::AvroEnum>::from_symbol(s).ok_or_else(|| {
                    $crate::records::UnknownSymbol {
                        enum_name: stringify!($name),
                        symbol: s.to_owned(),
                    }
                })
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let symbol = $crate::records::deserialize_symbol(
                    deserializer,
                    stringify!($name),
                    &[$( $symbol, )+],
                )?;
                Ok(<Self as $crate::records::AvroEnum>::from_symbol(&symbol).unwrap_or(Self::$default))
            }
        }
    };
}

/// `FromStr` of an [`AvroEnum`] got a string that is not one of its symbols.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{symbol}` is not a symbol of the Avro enum {enum_name}")]
pub struct UnknownSymbol {
    /// The enum's Avro name.
    pub enum_name: &'static str,
    /// The string that was given.
    pub symbol: String,
}

mod archival_request;
mod cognition_response;
mod command;
mod common;
mod compliance_event;
mod consent_processor_state;
mod consent_state;
mod conversation_event;
mod dead_letter;
mod delivery_status;
mod egress_ledger_entry;
mod identity_record;
mod inbound_message;
mod lifecycle_state;
mod media_state;
mod normalize_state;
mod outbound_dead_letter;
mod outbound_operation;
mod participant_binding;
mod segment_state;
mod transcript_entry;
mod twilio_webhook;
mod voice_link_state;

pub use archival_request::*;
pub use cognition_response::*;
pub use command::*;
pub use common::*;
pub use compliance_event::*;
pub use consent_processor_state::*;
pub use consent_state::*;
pub use conversation_event::*;
pub use dead_letter::*;
pub use delivery_status::*;
pub use egress_ledger_entry::*;
pub use identity_record::*;
pub use inbound_message::*;
pub use lifecycle_state::*;
pub use media_state::*;
pub use normalize_state::*;
pub use outbound_dead_letter::*;
pub use outbound_operation::*;
pub use participant_binding::*;
pub use segment_state::*;
pub use transcript_entry::*;
pub use twilio_webhook::*;
pub use voice_link_state::*;
