//! Greedy splitting of a normalized text into parts that each fit one message.
//!
//! For each part, the longest prefix of the remaining text that fits the
//! message's limits (characters, and for SMS segments, with the numbering and, on
//! a truncated last part, the marker counted in) is the window. Inside the window
//! the part ends at the best cut ([`crate::breaks`]): the last paragraph break,
//! else line break, else sentence end, provided it lies in the last
//! `100 − min_fill` percent of the window (so parts are not left mostly empty;
//! with `keep_paragraphs` any paragraph break in the window wins); else the last
//! space anywhere in the window; else the last grapheme boundary that is not
//! inside a URL. Only a URL (or a cluster-free run) longer than a whole part is
//! cut inside, at a grapheme boundary, and reported.

use unicode_segmentation::UnicodeSegmentation;

use crate::Error;
use crate::breaks::{self, Cut, Level};
use crate::encoding::{Meter, clusters, simple_clusters};

/// What one message may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    /// Maximum length in UTF-16 units (SMS, WhatsApp).
    pub max_utf16: Option<usize>,
    /// Maximum length in UTF-8 bytes (chat).
    pub max_utf8: Option<usize>,
    /// Maximum SMS segments.
    pub max_segments: Option<usize>,
}

impl Limit {
    pub(crate) fn fits(&self, m: &Meter) -> bool {
        self.max_utf16.is_none_or(|max| m.utf16() <= max)
            && self.max_utf8.is_none_or(|max| m.utf8() <= max)
            && self.max_segments.is_none_or(|max| m.segments() <= max)
    }

    fn fits_text(&self, text: &str) -> bool {
        let mut m = Meter::default();
        m.push_str(text);
        self.fits(&m)
    }
}

/// One part's text: `text[start..end]` of the normalized text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    pub start: usize,
    pub end: usize,
    /// A URL or an unbreakable run was cut inside because it is longer than a part.
    pub forced: bool,
}

/// Decorations counted into a part's budget.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Extra<'a> {
    pub prefix: &'a str,
    pub suffix: &'a str,
}

pub(crate) struct Splitter<'a> {
    text: &'a str,
    /// Computed on first use: a text that fits one message needs none.
    cuts: std::cell::OnceCell<Vec<Cut>>,
    keep_paragraphs: bool,
    min_fill_percent: usize,
    /// Every cluster of `text` is one character.
    simple: bool,
}

impl<'a> Splitter<'a> {
    /// `text` must be trimmed (no leading or trailing whitespace).
    pub(crate) fn new(text: &'a str, keep_paragraphs: bool, min_fill_percent: u8) -> Self {
        Self {
            text,
            cuts: std::cell::OnceCell::new(),
            simple: simple_clusters(text),
            keep_paragraphs,
            min_fill_percent: usize::from(min_fill_percent.min(100)),
        }
    }

    pub(crate) fn text(&self) -> &'a str {
        self.text
    }

    /// Where the next part starts after a part ending at `end`.
    pub(crate) fn next_start(&self, end: usize) -> usize {
        breaks::skip_ws(self.text, end)
    }

    /// The longest part starting at `start` that fits `limit` with `extra`.
    pub(crate) fn fill(
        &self,
        start: usize,
        extra: Extra<'_>,
        limit: Limit,
    ) -> Result<Piece, Error> {
        let text = self.text;
        let mut meter = Meter::default();
        meter.push_str(extra.prefix);
        let mut window_end = text.len();
        for (pos, g) in clusters(&text[start..], self.simple) {
            let mut next = meter;
            next.push_grapheme(g);
            let mut with_suffix = next;
            with_suffix.push_str(extra.suffix);
            if !limit.fits(&with_suffix) {
                window_end = start + pos;
                break;
            }
            meter = next;
        }
        if window_end == text.len() {
            let end = breaks::trim_end(text, start, text.len());
            if self.exact_fits(start, end, extra, limit) {
                return Ok(Piece {
                    start,
                    end,
                    forced: false,
                });
            }
        }
        let mut hi = window_end;
        while let Some(cut) = self.choose(start, hi) {
            if self.exact_fits(start, cut, extra, limit) {
                return Ok(Piece {
                    start,
                    end: cut,
                    forced: false,
                });
            }
            hi = cut - 1;
        }
        // No cut in the window: it lies inside one URL (or the window is empty).
        let mut end = window_end;
        while end > start {
            let body_end = breaks::trim_end(text, start, end);
            if body_end > start && self.exact_fits(start, body_end, extra, limit) {
                return Ok(Piece {
                    start,
                    end: body_end,
                    forced: true,
                });
            }
            end = text[start..end]
                .grapheme_indices(true)
                .next_back()
                .map_or(start, |(p, _)| start + p);
        }
        Err(Error::ClusterTooLong { offset: start })
    }

    fn exact_fits(&self, start: usize, end: usize, extra: Extra<'_>, limit: Limit) -> bool {
        if end <= start {
            return false;
        }
        let body = [extra.prefix, &self.text[start..end], extra.suffix].concat();
        limit.fits_text(&body)
    }

    /// The best cut in `(start, hi]`.
    fn choose(&self, start: usize, hi: usize) -> Option<usize> {
        let cuts = self.cuts.get_or_init(|| breaks::cuts(self.text));
        let lo_idx = cuts.partition_point(|c| c.pos <= start);
        let hi_idx = cuts.partition_point(|c| c.pos <= hi);
        let candidates = cuts.get(lo_idx..hi_idx)?;
        let last = candidates.last()?;
        let span = hi.saturating_sub(start);
        let min_pos = start + span * self.min_fill_percent / 100;
        let mut best: [Option<usize>; 5] = [None; 5];
        for c in candidates.iter().rev() {
            for level in [Level::Paragraph, Level::Line, Level::Sentence, Level::Word] {
                if c.level < level || best[level as usize].is_some() {
                    continue;
                }
                let allowed = match level {
                    Level::Paragraph => self.keep_paragraphs || c.pos >= min_pos,
                    Level::Line | Level::Sentence => c.pos >= min_pos,
                    Level::Word | Level::Grapheme => true,
                };
                if allowed {
                    best[level as usize] = Some(c.pos);
                }
            }
            // Nothing better further back: a paragraph break is the best there
            // is, and below the fill threshold only paragraph breaks (with
            // keep_paragraphs) could still improve on a word break.
            let below = c.pos < min_pos;
            if best[Level::Paragraph as usize].is_some()
                || (below && best[Level::Word as usize].is_some() && !self.keep_paragraphs)
            {
                break;
            }
        }
        [Level::Paragraph, Level::Line, Level::Sentence, Level::Word]
            .iter()
            .find_map(|&l| best[l as usize])
            .or(Some(last.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sms(segments: usize) -> Limit {
        Limit {
            max_utf16: Some(1600),
            max_utf8: None,
            max_segments: Some(segments),
        }
    }

    fn split_all(text: &str, limit: Limit) -> Vec<&str> {
        let s = Splitter::new(text, false, 50);
        let mut out = Vec::new();
        let mut start = 0;
        while start < text.len() {
            let piece = s.fill(start, Extra::default(), limit).expect("fits");
            out.push(&text[piece.start..piece.end]);
            start = s.next_start(piece.end);
        }
        out
    }

    #[test]
    fn prefers_sentence_in_upper_half() {
        // 100 + 2 + 100 chars: a sentence end at 101 of a 160-septet window.
        let text = format!(
            "{}. {}",
            "a ".repeat(50).trim_end(),
            "B ".repeat(60).trim_end()
        );
        let parts = split_all(&text, sms(1));
        assert!(parts[0].ends_with('.'), "{parts:?}");
    }

    #[test]
    fn word_break_beats_splitting_a_word() {
        let text = format!("short {}", "x".repeat(300));
        let parts = split_all(&text, sms(1));
        assert_eq!(parts[0], "short");
    }

    #[test]
    fn long_word_is_cut_at_graphemes() {
        let text = "y".repeat(200);
        let parts = split_all(&text, sms(1));
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            vec![160, 40]
        );
    }
}
