//! The targets, one per parser that takes outside input. Each panics when an
//! invariant is broken; a returned error is a correct answer to bad input.

pub mod avro;
mod consent;
mod ingress;
mod normalize;
mod segment;
mod sictl;
mod signature;

use crate::engine::Target;

/// Every target.
pub const TARGETS: &[Target] = &[
    ingress::FORM,
    ingress::JSON,
    ingress::ENVELOPE,
    ingress::REQUEST,
    signature::SIGNATURE,
    normalize::WEBHOOK,
    avro::RECORDS,
    segment::PLAN,
    segment::MEASURE,
    consent::KEYWORDS,
    sictl::SEGMENT_JSONL,
];

/// Every Avro record type the avro target decodes with.
#[must_use]
pub fn avro_types() -> &'static [avro::AvroType] {
    avro::TYPES
}

/// `datum` decoded as the type of schema `file` and encoded again.
#[must_use]
pub fn reencode(file: &str, datum: &[u8]) -> Option<Vec<u8>> {
    avro::TYPES
        .iter()
        .find(|t| t.0 == file)
        .and_then(|t| (t.3)(datum))
}

/// The target called `name`.
#[must_use]
pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Reads a fuzz input as a few small choices followed by fields: bytes up to
/// a separator (0xFF, never part of UTF-8) and the rest.
#[derive(Debug)]
pub(crate) struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) const fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// The next byte (0 when the input is used up).
    pub(crate) fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// One of `n` choices.
    pub(crate) fn choose(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }

    /// Bytes up to the next 0xFF (consumed) or the end.
    pub(crate) fn field(&mut self) -> &'a [u8] {
        match self.data.iter().position(|&b| b == 0xFF) {
            Some(i) => {
                let field = &self.data[..i];
                self.data = &self.data[i + 1..];
                field
            }
            None => self.rest(),
        }
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Bytes as text: as they are when UTF-8, else with replacement characters.
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
