//! Input rules of API.md for accounts.

use crate::error::CommandError;

/// Usernames: 3-32 characters of `[a-z0-9_.-]`. Uppercase input is folded to lowercase so
/// "Alice" and "alice" cannot be two accounts.
pub fn username(raw: &str) -> Result<String, CommandError> {
    let name = raw.trim().to_ascii_lowercase();
    let len = name.chars().count();
    if !(3..=32).contains(&len) {
        return Err(CommandError::invalid("username must be 3-32 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
    {
        return Err(CommandError::invalid(
            "username may only contain a-z, 0-9, '_', '.' and '-'",
        ));
    }
    Ok(name)
}

/// Passwords: 8-256 characters (counted as Unicode scalar values); never trimmed.
pub fn password(raw: &str) -> Result<(), CommandError> {
    let len = raw.chars().count();
    if !(8..=256).contains(&len) {
        return Err(CommandError::invalid("password must be 8-256 characters"));
    }
    Ok(())
}

/// A plausible e-mail address: one `@`, non-empty local part, a dotted domain, no spaces,
/// at most 255 bytes. Deliverability is not our business here.
pub fn email(raw: &str) -> Result<String, CommandError> {
    let email = raw.trim();
    let invalid = || CommandError::invalid("email is not a valid address");
    if email.len() > 255 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid());
    }
    let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
    if local.is_empty()
        || domain.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
    {
        return Err(invalid());
    }
    Ok(email.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(username(" Alice_1 ").unwrap(), "alice_1");
        assert!(username("ab").is_err());
        assert!(username(&"a".repeat(33)).is_err());
        assert!(username("bob smith").is_err());
        assert!(username("bøb").is_err());
        assert!(username("a.b-c_d").is_ok());
    }

    #[test]
    fn passwords_and_emails() {
        assert!(password("1234567").is_err());
        assert!(password("12345678").is_ok());
        assert!(password(&"x".repeat(257)).is_err());
        assert!(email("a@b.co").is_ok());
        assert!(email("a@b").is_err());
        assert!(email("a b@c.de").is_err());
        assert!(email("@c.de").is_err());
        assert!(email("a@@c.de").is_err());
    }
}
