//! Schema identity: parsing and normalizing what clients submit.

use apache_avro::Schema;
use sha2::{Digest, Sha256};

use crate::RegistryError;

/// A parsed, normalized Avro schema as the registry stores it.
#[derive(Debug, Clone)]
pub struct NormalizedSchema {
    pub parsed: Schema,
    /// Canonical JSON: object keys sorted, no insignificant whitespace. Two submissions that
    /// differ only in formatting or key order are the same schema and get the same id.
    pub text: String,
    pub fingerprint: Vec<u8>,
}

impl NormalizedSchema {
    pub fn parse(text: &str) -> Result<Self, RegistryError> {
        let json: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| RegistryError::InvalidSchema(format!("not JSON: {e}")))?;
        let parsed =
            Schema::parse(&json).map_err(|e| RegistryError::InvalidSchema(e.to_string()))?;
        let mut canonical = String::with_capacity(text.len());
        write_canonical(&json, &mut canonical);
        let fingerprint = Sha256::digest(canonical.as_bytes()).to_vec();
        Ok(Self {
            parsed,
            text: canonical,
            fingerprint,
        })
    }
}

/// Writes JSON with sorted object keys. Done by hand rather than relying on serde_json's map
/// order, which flips to insertion order if any crate in the build enables `preserve_order`,
/// and would then silently change every fingerprint.
fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_and_key_order_do_not_change_identity() {
        let a = NormalizedSchema::parse(
            r#"{"type":"record","name":"T","fields":[{"name":"a","type":"long"}]}"#,
        )
        .unwrap();
        let b = NormalizedSchema::parse("{ \"name\": \"T\",\n \"fields\": [ {\"type\": \"long\", \"name\": \"a\"} ], \"type\": \"record\" }").unwrap();
        assert_eq!(a.text, b.text);
        assert_eq!(a.fingerprint, b.fingerprint);
        let c = NormalizedSchema::parse(
            r#"{"type":"record","name":"T","fields":[{"name":"a","type":"long","default":1}]}"#,
        )
        .unwrap();
        assert_ne!(
            a.fingerprint, c.fingerprint,
            "a default is part of the schema"
        );
    }

    #[test]
    fn invalid_avro_is_rejected() {
        assert!(matches!(
            NormalizedSchema::parse(r#"{"type":"record","name":"T"}"#),
            Err(RegistryError::InvalidSchema(_))
        ));
        assert!(matches!(
            NormalizedSchema::parse("{not json"),
            Err(RegistryError::InvalidSchema(_))
        ));
    }
}
