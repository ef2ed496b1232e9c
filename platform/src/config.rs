//! Environment-variable configuration.
//!
//! Every service parses its settings once at start-up into a typed struct; these helpers give
//! them one behaviour: unset means the documented default, set-but-unparseable is a start-up
//! error naming the variable (never a silent fallback to the default).

use std::fmt::Display;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
}

/// Default `CHAT_MONGO_URL`: the local stack's MongoDB-protocol server (FerretDB, see
/// `deploy/local`). A real MongoDB deployment sets its own URL, pool and read preference.
pub const LOCAL_MONGO_URL: &str = "mongodb://127.0.0.1:27017/?directConnection=true";

/// Reads `name`, falling back to `default` when it is unset or empty.
pub fn env_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => {
            value.trim().parse::<T>().map_err(|e| ConfigError::Invalid {
                name: name.to_string(),
                value: value.clone(),
                reason: e.to_string(),
            })
        }
        _ => Ok(default),
    }
}

/// Reads a string variable with a default.
pub fn env_string(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value.trim().to_string(),
        _ => default.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_gives_default_and_garbage_names_the_variable() {
        // Variable names unique to this test so parallel tests cannot interfere.
        assert_eq!(env_or("PLATFORM_TEST_UNSET_VAR", 7u16).unwrap(), 7);
        // SAFETY: the variable is only touched by this test.
        unsafe { std::env::set_var("PLATFORM_TEST_BAD_PORT", "seventy") };
        let err = env_or("PLATFORM_TEST_BAD_PORT", 7u16).unwrap_err();
        assert!(err.to_string().contains("PLATFORM_TEST_BAD_PORT"), "{err}");
        unsafe { std::env::set_var("PLATFORM_TEST_GOOD_PORT", " 8081 ") };
        assert_eq!(env_or("PLATFORM_TEST_GOOD_PORT", 7u16).unwrap(), 8081);
    }
}
