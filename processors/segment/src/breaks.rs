//! Where a text may be cut into parts, and how good each place is.
//!
//! A cut is a byte offset where one part's body ends: always a grapheme cluster
//! boundary, right after a non-whitespace cluster, never strictly inside a URL or
//! e-mail address (found with `linkify`, scheme optional). The whitespace after a
//! cut is dropped (it would only start the next message with blanks).
//!
//! Levels, best first: a blank line (paragraph), a line break, the end of a
//! sentence (Unicode UAX #29 sentence boundaries, so also `。` in CJK text), a
//! space (word), and any other grapheme boundary (for text without spaces, or a
//! single token longer than a part).

use std::ops::Range;

use unicode_segmentation::UnicodeSegmentation;

/// How good a cut is; higher is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Grapheme = 0,
    Word = 1,
    Sentence = 2,
    Line = 3,
    Paragraph = 4,
}

/// A place where a part may end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cut {
    pub pos: usize,
    pub level: Level,
}

/// Whether a grapheme cluster is whitespace only (`\r\n` included).
pub(crate) fn is_ws(g: &str) -> bool {
    g.chars().all(char::is_whitespace)
}

/// Line breaks a whitespace cluster stands for (a paragraph separator counts two).
fn line_breaks(g: &str) -> usize {
    if g.contains('\u{2029}') {
        2
    } else {
        usize::from(g.contains(['\n', '\r', '\u{2028}', '\u{85}', '\u{0B}', '\u{0C}']))
    }
}

/// Byte ranges of URLs and e-mail addresses in `text`.
pub(crate) fn protected_ranges(text: &str) -> Vec<Range<usize>> {
    let mut finder = linkify::LinkFinder::new();
    finder.url_must_have_scheme(false);
    finder.links(text).map(|l| l.start()..l.end()).collect()
}

/// Every cut of `text`, sorted by position. Cuts at 0 and at the end are not listed.
pub(crate) fn cuts(text: &str) -> Vec<Cut> {
    let protected = protected_ranges(text);
    let mut protected = protected.iter().peekable();
    let mut cuts = Vec::new();
    let mut graphemes =
        crate::encoding::clusters(text, crate::encoding::simple_clusters(text)).peekable();
    let mut prev_ws = true; // no cut at 0
    while let Some((pos, g)) = graphemes.next() {
        let ws = is_ws(g);
        if !prev_ws {
            while protected.peek().is_some_and(|r| r.end <= pos) {
                protected.next();
            }
            let inside_url = protected.peek().is_some_and(|r| r.start < pos);
            if !inside_url {
                let level = if ws {
                    let mut breaks = line_breaks(g);
                    let mut rest = graphemes.clone();
                    while let Some((_, next)) = rest.next().filter(|(_, n)| is_ws(n)) {
                        breaks += line_breaks(next);
                    }
                    match breaks {
                        0 => Level::Word,
                        1 => Level::Line,
                        _ => Level::Paragraph,
                    }
                } else {
                    Level::Grapheme
                };
                cuts.push(Cut { pos, level });
            }
        }
        prev_ws = ws;
    }
    // A trailing whitespace run is not a cut: the text ends there anyway.
    if let Some(last) = cuts.last()
        && text[last.pos..].graphemes(true).all(is_ws)
    {
        cuts.pop();
    }
    for (start, _) in text.split_sentence_bound_indices() {
        if start == 0 {
            continue;
        }
        let pos = trim_end(text, 0, start);
        if let Ok(i) = cuts.binary_search_by_key(&pos, |c| c.pos) {
            cuts[i].level = cuts[i].level.max(Level::Sentence);
        }
    }
    cuts
}

/// `end` moved back over whitespace clusters, not before `start`.
pub(crate) fn trim_end(text: &str, start: usize, end: usize) -> usize {
    let mut end = end;
    for (pos, g) in text[start..end].grapheme_indices(true).rev() {
        if is_ws(g) {
            end = start + pos;
        } else {
            break;
        }
    }
    end
}

/// `start` moved forward over whitespace clusters.
pub(crate) fn skip_ws(text: &str, start: usize) -> usize {
    for (pos, g) in text[start..].grapheme_indices(true) {
        if !is_ws(g) {
            return start + pos;
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(text: &str) -> Vec<(&str, Level)> {
        cuts(text)
            .iter()
            .map(|c| (&text[..c.pos], c.level))
            .collect()
    }

    #[test]
    fn levels_of_whitespace_and_sentences() {
        let text = "One two. Three\nFour\n\nFive";
        let found: Vec<_> = levels(text)
            .into_iter()
            .filter(|(_, l)| *l > Level::Grapheme)
            .collect();
        assert_eq!(
            found,
            vec![
                ("One", Level::Word),
                ("One two.", Level::Sentence),
                ("One two. Three", Level::Line),
                ("One two. Three\nFour", Level::Paragraph),
            ]
        );
    }

    #[test]
    fn no_cut_inside_urls_or_clusters() {
        let text = "see https://example.com/a?b=1!c and 👨‍👩‍👧 www.example.org/x.";
        let urls = protected_ranges(text);
        assert_eq!(urls.len(), 2, "{urls:?}");
        for c in cuts(text) {
            assert!(text.is_char_boundary(c.pos));
            assert!(
                !urls.iter().any(|r| r.start < c.pos && c.pos < r.end),
                "{c:?}"
            );
            let family = text.find('👨').unwrap_or_default();
            assert!(!(family < c.pos && c.pos < family + "👨‍👩‍👧".len()), "{c:?}");
        }
    }

    #[test]
    fn cjk_sentences() {
        let text = "今日は晴れです。明日は雨です。";
        let sentence: Vec<_> = levels(text)
            .into_iter()
            .filter(|(_, l)| *l == Level::Sentence)
            .collect();
        assert_eq!(sentence, vec![("今日は晴れです。", Level::Sentence)]);
    }
}
