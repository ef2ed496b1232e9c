//! Input rules for room and message commands (API.md).

use unicode_segmentation::UnicodeSegmentation;

use crate::error::CommandError;

pub const MAX_CONTENT_CHARS: usize = 4000;
pub const MAX_ROOM_NAME_CHARS: usize = 100;
pub const MAX_TOPIC_CHARS: usize = 500;
pub const MAX_REASON_CHARS: usize = 500;

fn has_forbidden_controls(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
}

/// Message content: 1-4000 characters after trimming, no control characters but newlines
/// and tabs. Returns the trimmed text, which is what gets stored.
pub fn content(raw: &str) -> Result<String, CommandError> {
    let text = raw.trim();
    let len = text.chars().count();
    if len == 0 {
        return Err(CommandError::invalid("content must not be empty"));
    }
    if len > MAX_CONTENT_CHARS {
        return Err(CommandError::invalid(format!(
            "content is {len} characters; the limit is {MAX_CONTENT_CHARS}"
        )));
    }
    if has_forbidden_controls(text) {
        return Err(CommandError::invalid("content contains control characters"));
    }
    Ok(text.to_string())
}

pub fn room_name(raw: &str) -> Result<String, CommandError> {
    let name = raw.trim();
    let len = name.chars().count();
    if len == 0 || len > MAX_ROOM_NAME_CHARS {
        return Err(CommandError::invalid(format!(
            "name must be 1-{MAX_ROOM_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(CommandError::invalid("name contains control characters"));
    }
    Ok(name.to_string())
}

/// An optional free text (topic, reason): trimmed, empty means none.
pub fn optional_text(
    raw: Option<&str>,
    field: &str,
    max: usize,
) -> Result<Option<String>, CommandError> {
    let Some(text) = raw.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if text.chars().count() > max {
        return Err(CommandError::invalid(format!(
            "{field} must be at most {max} characters"
        )));
    }
    if has_forbidden_controls(text) {
        return Err(CommandError::invalid(format!(
            "{field} contains control characters"
        )));
    }
    Ok(Some(text.to_string()))
}

/// `client_msg_id`: 1-64 characters of `[A-Za-z0-9_.:-]` (UUIDs, ULIDs, counters all fit).
pub fn client_msg_id(raw: &str) -> Result<String, CommandError> {
    let ok = (1..=64).contains(&raw.len())
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
    if !ok {
        return Err(CommandError::invalid(
            "client_msg_id must be 1-64 characters of A-Z a-z 0-9 _ . : -",
        ));
    }
    Ok(raw.to_string())
}

/// An id the platform issued: a UUID.
pub fn id(raw: &str, field: &str) -> Result<String, CommandError> {
    uuid::Uuid::parse_str(raw)
        .map(|u| u.to_string())
        .map_err(|_| CommandError::invalid(format!("{field} is not a valid id")))
}

/// A reaction: one emoji (a single grapheme cluster with no ASCII in it, e.g. 👍, 👩🏽‍💻, 🇫🇷)
/// or a `:shortcode:` of 1-32 characters `[a-z0-9_+-]`.
pub fn emoji(raw: &str) -> Result<String, CommandError> {
    let invalid = || CommandError::invalid("emoji must be a single emoji or a :shortcode:");
    if let Some(code) = raw.strip_prefix(':').and_then(|r| r.strip_suffix(':')) {
        let ok = (1..=32).contains(&code.len())
            && code.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '+' | '-')
            });
        return if ok {
            Ok(raw.to_string())
        } else {
            Err(invalid())
        };
    }
    let single = raw.graphemes(true).count() == 1;
    let ok = single
        && raw.len() <= 64
        && !raw
            .chars()
            .any(|c| c.is_ascii() || c.is_control() || c.is_whitespace());
    if ok {
        Ok(raw.to_string())
    } else {
        Err(invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_rules() {
        assert_eq!(content("  hi  ").unwrap(), "hi");
        assert!(content("   ").is_err());
        assert!(content(&"é".repeat(4000)).is_ok());
        assert!(content(&"é".repeat(4001)).is_err());
        assert!(content("a\u{0}b").is_err());
        assert!(content("line\nline\ttab").is_ok());
    }

    #[test]
    fn emoji_rules() {
        for ok in ["👍", "👩🏽‍💻", "🇫🇷", "❤️", ":party_parrot:", ":+1:"] {
            assert!(emoji(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a", "👍👍", " 👍", ":Party:", "::", "x👍", ":a b:", "\u{7}",
        ] {
            assert!(emoji(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_and_keys() {
        assert!(client_msg_id("c-1:2.3_x").is_ok());
        assert!(client_msg_id("").is_err());
        assert!(client_msg_id(&"a".repeat(65)).is_err());
        assert!(client_msg_id("a b").is_err());
        assert!(id("018f3e1c-8c5b-7cc3-9a43-6d1f0b7f2a11", "room_id").is_ok());
        assert!(id("nope", "room_id").is_err());
    }
}
