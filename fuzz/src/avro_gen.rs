//! Random but valid Avro datums of a schema, written byte by byte (zig-zag
//! varints, length-prefixed strings, blocked arrays and maps), independently
//! of apache-avro's writer: a second implementation of the encoding to feed
//! the decoder with well-formed records it then has to agree with.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{Name, ResolvedSchema};

use crate::rng::Rng;

const STRINGS: &[&str] = &[
    "",
    "+14155550100",
    "whatsapp:+14155550100",
    "CH00000000000000000000000000000001",
    "SM0123456789abcdef0123456789abcdef",
    "Hello Si",
    "STOP",
    "arrêt",
    "👨‍👩‍👧‍👦 e\u{301}",
    "en-US",
    "https://example.com/media/1.jpg",
    "{\"a\":1}",
];

/// Writes random datums of one schema.
#[derive(Debug)]
pub struct Generator<'s> {
    root: &'s Schema,
    names: HashMap<Name, &'s Schema>,
}

impl<'s> Generator<'s> {
    /// A generator for `schema` (its named types resolved).
    ///
    /// # Panics
    /// When the schema's references do not resolve (a compiled schema always does).
    #[must_use]
    pub fn new(schema: &'s Schema) -> Self {
        let resolved = ResolvedSchema::try_from(schema).expect("compiled schemas resolve");
        let names = resolved
            .get_names()
            .iter()
            .map(|(n, s)| (n.clone(), *s))
            .collect();
        Self {
            root: schema,
            names,
        }
    }

    /// One datum.
    #[must_use]
    pub fn datum(&self, rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(self.root, rng, &mut out, 0);
        out
    }

    fn write(&self, schema: &Schema, rng: &mut Rng, out: &mut Vec<u8>, depth: usize) {
        match schema {
            Schema::Null => {}
            Schema::Boolean => out.push(u8::from(rng.one_in(2))),
            Schema::Int | Schema::Date | Schema::TimeMillis => {
                long(out, i64::from(int(rng)));
            }
            Schema::Long
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos
            | Schema::TimeMicros => long(out, long_value(rng)),
            Schema::Float => out.extend_from_slice(&float(rng).to_le_bytes()),
            Schema::Double => out.extend_from_slice(&f64::from(float(rng)).to_le_bytes()),
            Schema::Bytes | Schema::String | Schema::BigDecimal => {
                let text = string(rng);
                long(out, i64::try_from(text.len()).unwrap_or(0));
                out.extend_from_slice(text.as_bytes());
            }
            Schema::Uuid(_) => {
                let text = "6f1c2b9e-2f4a-4a8e-9c1d-0b2e3f4a5b6c";
                long(out, 36);
                out.extend_from_slice(text.as_bytes());
            }
            Schema::Array(array) => {
                let n = if depth > 4 { 0 } else { rng.below(4) };
                if n > 0 {
                    long(out, i64::try_from(n).unwrap_or(0));
                    for _ in 0..n {
                        self.write(&array.items, rng, out, depth + 1);
                    }
                }
                out.push(0);
            }
            Schema::Map(map) => {
                let n = if depth > 4 { 0 } else { rng.below(4) };
                if n > 0 {
                    long(out, i64::try_from(n).unwrap_or(0));
                    for i in 0..n {
                        let key = format!("{}{i}", string(rng));
                        long(out, i64::try_from(key.len()).unwrap_or(0));
                        out.extend_from_slice(key.as_bytes());
                        self.write(&map.types, rng, out, depth + 1);
                    }
                }
                out.push(0);
            }
            Schema::Union(union) => {
                let variants = union.variants();
                let index = rng.below(variants.len());
                long(out, i64::try_from(index).unwrap_or(0));
                self.write(&variants[index], rng, out, depth + 1);
            }
            Schema::Record(record) => {
                for field in &record.fields {
                    self.write(&field.schema, rng, out, depth + 1);
                }
            }
            Schema::Enum(e) => {
                let index = rng.below(e.symbols.len());
                long(out, i64::try_from(index).unwrap_or(0));
            }
            Schema::Fixed(fixed) | Schema::Duration(fixed) => {
                out.extend((0..fixed.size).map(|_| rng.byte()));
            }
            Schema::Decimal(_) => {
                long(out, 1);
                out.push(rng.byte());
            }
            Schema::Ref { name } => {
                if let Some(schema) = self.names.get(name) {
                    self.write(schema, rng, out, depth + 1);
                }
            }
        }
    }
}

fn int(rng: &mut Rng) -> i32 {
    match rng.below(4) {
        0 => 0,
        1 => i32::try_from(rng.below(10)).unwrap_or(0),
        2 => *rng.pick(&[i32::MIN, i32::MAX, -1, 1600]),
        _ => rng.next_u64().to_le_bytes()[0..4]
            .iter()
            .fold(0, |a, &b| (a << 8) | i32::from(b)),
    }
}

fn long_value(rng: &mut Rng) -> i64 {
    match rng.below(4) {
        0 => 1_700_000_000_000 + i64::try_from(rng.below(1 << 30)).unwrap_or(0),
        1 => *rng.pick(&[i64::MIN, i64::MAX, -1, 0]),
        _ => i64::from_le_bytes(rng.next_u64().to_le_bytes()),
    }
}

fn float(rng: &mut Rng) -> f32 {
    *rng.pick(&[0.0, 1.5, -2.0, f32::NAN, f32::INFINITY, 0.93])
}

fn string(rng: &mut Rng) -> String {
    if rng.one_in(4) {
        let n = rng.len(40);
        (0..n)
            .map(|_| {
                char::from_u32(u32::try_from(rng.below(0x11_0000)).unwrap_or(0)).unwrap_or('?')
            })
            .collect()
    } else {
        (*rng.pick(STRINGS)).to_owned()
    }
}

/// Writes `value` as an Avro `long` (zig-zag varint).
pub fn long(out: &mut Vec<u8>, value: i64) {
    let mut z = ((value << 1) ^ (value >> 63)).cast_unsigned();
    loop {
        let byte = u8::try_from(z & 0x7F).unwrap_or(0);
        z >>= 7;
        if z == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
