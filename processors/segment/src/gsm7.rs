//! The GSM 03.38 (3GPP TS 23.038) 7-bit default alphabet and its extension table.
//!
//! A character of the default alphabet takes one septet. A character of the
//! extension table takes two: the escape code `0x1B` followed by its code in the
//! extension table. Everything else cannot be sent as GSM-7 and turns the whole
//! message into UCS-2.
//!
//! `0x1B` itself is the escape to the extension table, not a character: `U+001B`
//! is not GSM-7 here (Twilio's calculator agrees). Of the extension table only the
//! ten printable entries (and form feed) are used; `0x1B 0x0D` (CR2) and
//! `0x1B 0x1B` (a further extension) are not characters of the text.

/// The default alphabet, indexed by septet code. Index `0x1B` is the escape code
/// (never looked up as a character).
pub const BASIC: [char; 128] = [
    // 0x00
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å',
    // 0x10: Greek capitals that look unlike Latin ones; 0x1B is the escape code
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1B}', 'Æ', 'æ', 'ß', 'É',
    // 0x20: note 0x24 is the currency sign ¤, not the dollar ($ is 0x02)
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/',
    // 0x30
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?',
    // 0x40: ¡ where ASCII has @
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O',
    // 0x50: Ä Ö Ñ Ü § where ASCII has [ \ ] ^ _
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§',
    // 0x60: ¿ where ASCII has `
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o',
    // 0x70: ä ö ñ ü à where ASCII has { | } ~ DEL
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à',
];

/// The escape code that introduces a character of the extension table.
pub const ESCAPE: u8 = 0x1B;

/// The extension table: (code after the escape, character). Each costs two septets.
pub const EXTENSION: [(u8, char); 10] = [
    (0x0A, '\u{0C}'), // form feed
    (0x14, '^'),
    (0x28, '{'),
    (0x29, '}'),
    (0x2F, '\\'),
    (0x3C, '['),
    (0x3D, '~'),
    (0x3E, ']'),
    (0x40, '|'),
    (0x65, '€'),
];

/// Code points below this are looked up in [`LOOKUP`]; above it only `€` is GSM-7.
const LOOKUP_LEN: usize = 0x400;

/// Per code point below `0x400`: 0 = not GSM-7, else `1 + code` for the default
/// alphabet or `0x81 + code` for the extension table (code < 0x80 in both).
static LOOKUP: [u8; LOOKUP_LEN] = build_lookup();

const fn build_lookup() -> [u8; LOOKUP_LEN] {
    let mut table = [0u8; LOOKUP_LEN];
    let mut code = 0;
    while code < BASIC.len() {
        if code != ESCAPE as usize {
            let c = BASIC[code] as usize;
            if c < LOOKUP_LEN {
                table[c] = code as u8 + 1;
            }
        }
        code += 1;
    }
    let mut i = 0;
    while i < EXTENSION.len() {
        let (code, c) = EXTENSION[i];
        let c = c as usize;
        if c < LOOKUP_LEN {
            table[c] = 0x81 + code;
        }
        i += 1;
    }
    table
}

/// How a character is written in GSM-7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Septets {
    /// One septet of the default alphabet, with its code.
    Basic(u8),
    /// Escape `0x1B` plus this code of the extension table: two septets.
    Extension(u8),
}

impl Septets {
    /// Septets the character takes: 1 or 2.
    #[must_use]
    pub const fn septets(self) -> usize {
        match self {
            Self::Basic(_) => 1,
            Self::Extension(_) => 2,
        }
    }
}

/// The GSM-7 form of `c`, or `None` when `c` is not in the default alphabet or
/// the extension table.
#[must_use]
#[inline]
pub fn lookup(c: char) -> Option<Septets> {
    let cp = c as usize;
    if cp < LOOKUP_LEN {
        match LOOKUP[cp] {
            0 => None,
            v @ 1..=0x80 => Some(Septets::Basic(v - 1)),
            v => Some(Septets::Extension(v - 0x81)),
        }
    } else if c == '€' {
        Some(Septets::Extension(0x65))
    } else {
        None
    }
}

/// Septets `c` takes in GSM-7 (1 or 2), `None` when it is not GSM-7.
#[must_use]
#[inline]
pub fn septets(c: char) -> Option<usize> {
    lookup(c).map(Septets::septets)
}

/// Whether every character of `text` is GSM-7.
#[must_use]
pub fn is_gsm7(text: &str) -> bool {
    text.chars().all(|c| lookup(c).is_some())
}

/// Septets of `text` in GSM-7, `None` when a character is not GSM-7.
#[must_use]
pub fn septet_len(text: &str) -> Option<usize> {
    text.chars().map(septets).sum()
}

/// The unpacked septet codes of `text` (one byte per septet, extension
/// characters as `0x1B` + code), `None` when a character is not GSM-7.
#[must_use]
pub fn encode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match lookup(c)? {
            Septets::Basic(code) => out.push(code),
            Septets::Extension(code) => out.extend([ESCAPE, code]),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_entry_round_trips() {
        for (code, &c) in BASIC.iter().enumerate() {
            if code == usize::from(ESCAPE) {
                assert_eq!(lookup(c), None, "U+001B is the escape, not a character");
            } else {
                assert_eq!(lookup(c), Some(Septets::Basic(code as u8)), "{c:?}");
            }
        }
        for (code, c) in EXTENSION {
            assert_eq!(lookup(c), Some(Septets::Extension(code)), "{c:?}");
        }
    }

    #[test]
    fn alphabet_sizes() {
        // 128 codes minus the escape = 127 characters, plus 10 extension characters.
        let all: Vec<char> = (0..=0x10_FFFF)
            .filter_map(char::from_u32)
            .filter(|&c| lookup(c).is_some())
            .collect();
        assert_eq!(all.len(), 127 + 10);
    }

    #[test]
    fn ascii_outside_the_default_alphabet() {
        // Of printable ASCII only ` is missing entirely; ^ { } \ [ ~ ] | are extension characters.
        let missing: String = (' '..='~').filter(|&c| lookup(c).is_none()).collect();
        assert_eq!(missing, "`");
        let two: String = (' '..='~').filter(|&c| septets(c) == Some(2)).collect();
        assert_eq!(two, "[\\]^{|}~");
    }

    #[test]
    fn encode_uses_escape_for_extension() {
        assert_eq!(encode("a€{"), Some(vec![0x61, 0x1B, 0x65, 0x1B, 0x28]));
        assert_eq!(encode("@$"), Some(vec![0x00, 0x02]));
        assert_eq!(encode("ç"), None);
    }
}
