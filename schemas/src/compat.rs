//! Avro schema compatibility as the platform defines it, shared by the schema registry (on
//! every registration) and by the contract test (against the committed released versions).

use apache_avro::Schema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};

/// Confluent's compatibility levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Level {
    /// What a subject gets unless configured otherwise (Confluent's default).
    pub const DEFAULT: Level = Level::Backward;

    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.to_ascii_uppercase().as_str() {
            "NONE" => Level::None,
            "BACKWARD" => Level::Backward,
            "BACKWARD_TRANSITIVE" => Level::BackwardTransitive,
            "FORWARD" => Level::Forward,
            "FORWARD_TRANSITIVE" => Level::ForwardTransitive,
            "FULL" => Level::Full,
            "FULL_TRANSITIVE" => Level::FullTransitive,
            _ => return None,
        })
    }

    /// Transitive levels check every earlier version, the others only the latest.
    pub fn transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }
}

/// Checks `candidate` against `existing` (oldest first) under `level`. `Err` carries a
/// human-readable reason naming the version that conflicts.
pub fn check(level: Level, candidate: &Schema, existing: &[(i32, Schema)]) -> Result<(), String> {
    let against: &[(i32, Schema)] = if level.transitive() {
        existing
    } else {
        match existing.last() {
            Some(_) => &existing[existing.len() - 1..],
            None => &[],
        }
    };
    for (version, old) in against {
        let backward = || can_read(old, candidate);
        let forward = || can_read(candidate, old);
        let outcome = match level {
            Level::None => Ok(()),
            Level::Backward | Level::BackwardTransitive => backward(),
            Level::Forward | Level::ForwardTransitive => forward(),
            Level::Full | Level::FullTransitive => backward().and_then(|()| forward()),
        };
        outcome.map_err(|reason| {
            format!(
                "{} check against version {version}: {reason}",
                level.as_str()
            )
        })?;
    }
    Ok(())
}

/// Whether data written with `writer` can always be read with `reader`. A partial match (some
/// data would fail, e.g. a union that lost a branch) is not enough: readers must never fail.
pub fn can_read(writer: &Schema, reader: &Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => Err(
            "only partially compatible: some records written with the old schema could not be read"
                .into(),
        ),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"T","namespace":"x","fields":[{fields}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn backward_allows_new_optional_field_and_rejects_new_required_field() {
        let v1 = schema(r#"{"name":"a","type":"long"}"#);
        let optional = schema(
            r#"{"name":"a","type":"long"},{"name":"b","type":["null","string"],"default":null}"#,
        );
        let required = schema(r#"{"name":"a","type":"long"},{"name":"b","type":"string"}"#);
        let existing = vec![(1, v1)];
        assert!(check(Level::Backward, &optional, &existing).is_ok());
        let err = check(Level::Backward, &required, &existing).unwrap_err();
        assert!(err.contains("version 1"), "{err}");
        assert!(check(Level::None, &required, &existing).is_ok());
        // Removing a field is backward compatible but not forward compatible.
        let removed = schema(r#"{"name":"z","type":["null","long"],"default":null}"#);
        assert!(check(Level::Backward, &removed, &existing).is_ok());
        assert!(check(Level::Full, &removed, &existing).is_err());
    }

    #[test]
    fn transitive_checks_every_version() {
        let v1 = schema(r#"{"name":"a","type":"long"}"#);
        let v2 = schema(r#"{"name":"b","type":["null","long"],"default":null}"#);
        let v3 = schema(
            r#"{"name":"a","type":"string"},{"name":"b","type":["null","long"],"default":null}"#,
        );
        // v3 reads v2 data (a is absent there... and required in v3 without default: incompatible)
        let existing = vec![(1, v1), (2, v2)];
        assert!(check(Level::Backward, &v3, &existing).is_err());
        let v3b = schema(
            r#"{"name":"a","type":"string","default":""},{"name":"b","type":["null","long"],"default":null}"#,
        );
        // Reads v2 (a defaulted) but not v1 (a is a long there).
        assert!(check(Level::Backward, &v3b, &existing).is_ok());
        assert!(check(Level::BackwardTransitive, &v3b, &existing).is_err());
    }
}
