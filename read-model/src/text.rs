//! Search tokens: FerretDB has no `$text` (and real MongoDB's does not fold CJK), so each
//! message carries a normalized `tokens` array and a search matches every query token.
//!
//! Normalization: Unicode NFKD with combining marks dropped (so "Crème" finds "creme"), then
//! lowercase; words split at anything that is not a letter or digit. Scripts written without
//! spaces (CJK, Thai...) are indexed as single characters plus overlapping pairs, so a query of
//! any length finds them: its own pairs (or its single character) are all in the document.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Tokens kept per message; beyond it, a very long message is searchable by its beginning.
pub const MAX_TOKENS: usize = 512;
/// Longest token kept, in characters (longer words are cut).
const MAX_TOKEN_CHARS: usize = 64;

fn is_unspaced(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF   // Hiragana, Katakana
        | 0x3400..=0x4DBF // CJK Extension A
        | 0x4E00..=0x9FFF // CJK Unified Ideographs
        | 0xF900..=0xFAFF // CJK Compatibility Ideographs
        | 0xAC00..=0xD7AF // Hangul syllables
        | 0x0E00..=0x0E7F // Thai
        | 0x20000..=0x2FA1F)
}

/// Folds case and diacritics: decompose, drop combining marks, lowercase. Hangul syllables
/// are kept whole (decomposed they would be jamo, not marks, and no longer syllables).
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if ('\u{AC00}'..='\u{D7AF}').contains(&c) {
            out.push(c);
            continue;
        }
        for d in std::iter::once(c).nfkd().filter(|d| !is_combining_mark(*d)) {
            out.extend(d.to_lowercase());
        }
    }
    out
}

/// Tokens of a document (deduplicated, order of first appearance).
pub fn tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut push = |t: String, out: &mut Vec<String>| {
        if out.len() < MAX_TOKENS && seen.insert(t.clone()) {
            out.push(t);
        }
    };
    let normalized = normalize(text);
    let mut word = String::new();
    let mut run: Vec<char> = Vec::new();
    let flush_word = |word: &mut String,
                      out: &mut Vec<String>,
                      push: &mut dyn FnMut(String, &mut Vec<String>)| {
        if !word.is_empty() {
            push(word.chars().take(MAX_TOKEN_CHARS).collect(), out);
            word.clear();
        }
    };
    let flush_run = |run: &mut Vec<char>,
                     out: &mut Vec<String>,
                     push: &mut dyn FnMut(String, &mut Vec<String>)| {
        for (i, c) in run.iter().enumerate() {
            push(c.to_string(), out);
            if let Some(next) = run.get(i + 1) {
                push(format!("{c}{next}"), out);
            }
        }
        run.clear();
    };
    for c in normalized.chars() {
        if is_unspaced(c) {
            flush_word(&mut word, &mut out, &mut push);
            run.push(c);
        } else if c.is_alphanumeric() {
            flush_run(&mut run, &mut out, &mut push);
            word.push(c);
        } else {
            flush_word(&mut word, &mut out, &mut push);
            flush_run(&mut run, &mut out, &mut push);
        }
    }
    flush_word(&mut word, &mut out, &mut push);
    flush_run(&mut run, &mut out, &mut push);
    out
}

/// Tokens a query must find in a document: its words, and for unspaced runs their pairs (or
/// the single character of a one-character run).
pub fn query_tokens(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let normalized = normalize(query);
    let mut word = String::new();
    let mut run: Vec<char> = Vec::new();
    let emit_run = |run: &mut Vec<char>, out: &mut Vec<String>| {
        match run.len() {
            0 => {}
            1 => out.push(run[0].to_string()),
            _ => out.extend(run.windows(2).map(|w| format!("{}{}", w[0], w[1]))),
        }
        run.clear();
    };
    for c in normalized.chars() {
        if is_unspaced(c) {
            if !word.is_empty() {
                out.push(
                    std::mem::take(&mut word)
                        .chars()
                        .take(MAX_TOKEN_CHARS)
                        .collect(),
                );
            }
            run.push(c);
        } else if c.is_alphanumeric() {
            emit_run(&mut run, &mut out);
            word.push(c);
        } else {
            if !word.is_empty() {
                out.push(
                    std::mem::take(&mut word)
                        .chars()
                        .take(MAX_TOKEN_CHARS)
                        .collect(),
                );
            }
            emit_run(&mut run, &mut out);
        }
    }
    if !word.is_empty() {
        out.push(word.chars().take(MAX_TOKEN_CHARS).collect());
    }
    emit_run(&mut run, &mut out);
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finds(doc: &str, query: &str) -> bool {
        let doc = tokens(doc);
        let q = query_tokens(query);
        !q.is_empty() && q.iter().all(|t| doc.contains(t))
    }

    #[test]
    fn case_and_accents_fold() {
        assert!(finds("Crème Brûlée at the CAFÉ", "creme brulee"));
        assert!(finds("naïve Straße", "NAIVE strasse") || finds("naïve Straße", "naive straße"));
        assert!(finds("Hello, World!", "world"));
        assert!(!finds("Hello, World!", "worlds"));
        assert_eq!(tokens("a-b_c d"), ["a", "b", "c", "d"]);
    }

    #[test]
    fn cjk_is_found_by_any_substring() {
        let doc = "今日は東京タワーに行きました";
        assert!(finds(doc, "東京タワー"));
        assert!(finds(doc, "東京"));
        assert!(finds(doc, "京"));
        assert!(!finds(doc, "大阪"));
        assert!(finds("mixed 東京 text", "東京 TEXT"));
        assert!(finds("한국어 문장", "한국"));
    }

    #[test]
    fn tokens_are_bounded_and_deduplicated() {
        let long = (0..2000)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(tokens(&long).len(), MAX_TOKENS);
        assert_eq!(tokens("echo echo ECHO"), ["echo"]);
        assert_eq!(tokens(&"x".repeat(100))[0].chars().count(), 64);
        assert!(query_tokens("  !!! ").is_empty());
    }
}
