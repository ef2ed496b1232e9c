//! The contract may only evolve BACKWARD-compatibly: a consumer built with the current schema
//! must read every event ever written. `avro/released/<name>.v<N>.avsc` holds every released
//! version; this test fails when a schema change breaks any of them, or when a change was made
//! without recording it as a new released version.

use std::collections::BTreeMap;
use std::path::PathBuf;

use apache_avro::Schema;
use schemas::EventKind;
use schemas::compat::{Level, check};

fn avro_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("avro")
}

/// Released versions of one event's schema, oldest first.
fn released(kind: EventKind) -> Vec<(i32, String)> {
    let stem = kind.file_name().trim_end_matches(".avsc");
    let mut versions = BTreeMap::new();
    for entry in std::fs::read_dir(avro_dir().join("released")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(rest) = name.strip_prefix(&format!("{stem}.v")) else {
            continue;
        };
        let version: i32 = rest
            .trim_end_matches(".avsc")
            .parse()
            .unwrap_or_else(|_| panic!("bad released file name {name}"));
        let text = std::fs::read_to_string(avro_dir().join("released").join(&name)).unwrap();
        versions.insert(version, text);
    }
    versions.into_iter().collect()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

#[test]
fn current_schema_reads_every_released_version() {
    for &kind in EventKind::ALL {
        let current = kind.parsed_schema().unwrap();
        let history: Vec<(i32, Schema)> = released(kind)
            .into_iter()
            .map(|(v, text)| (v, Schema::parse_str(&text).unwrap()))
            .collect();
        assert!(
            !history.is_empty(),
            "{} has no released version",
            kind.file_name()
        );
        check(Level::BackwardTransitive, &current, &history).unwrap_or_else(|reason| {
            panic!(
                "{} breaks BACKWARD compatibility: {reason}",
                kind.file_name()
            )
        });
    }
}

#[test]
fn every_change_is_recorded_as_a_released_version() {
    for &kind in EventKind::ALL {
        let history = released(kind);
        let (newest, text) = history.last().expect("released version");
        assert_eq!(
            json(text),
            json(kind.schema_source()),
            "{} differs from its newest released version v{newest}: copy it to avro/released/{}.v{}.avsc",
            kind.file_name(),
            kind.file_name().trim_end_matches(".avsc"),
            newest + 1
        );
        // Each released version must itself have been a compatible step.
        for i in 1..history.len() {
            let older: Vec<(i32, Schema)> = history[..i]
                .iter()
                .map(|(v, t)| (*v, Schema::parse_str(t).unwrap()))
                .collect();
            let step = Schema::parse_str(&history[i].1).unwrap();
            check(Level::BackwardTransitive, &step, &older).unwrap();
        }
    }
}

/// The check above is only worth something if it catches real breaks: take each committed
/// schema, make the usual mistakes, and require that every one is rejected.
#[test]
fn breaking_changes_to_committed_schemas_are_detected() {
    for &kind in EventKind::ALL {
        let (version, text) = released(kind).pop().unwrap();
        let old = vec![(version, Schema::parse_str(&text).unwrap())];

        // 1. A new field without a default: old records have no value for it.
        let mut added = json(&text);
        added["fields"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"name": "added_without_default", "type": "string"}));
        let added = Schema::parse(&added).unwrap();
        assert!(
            check(Level::Backward, &added, &old).is_err(),
            "{}: added field",
            kind.file_name()
        );

        // 2. The envelope's event_id turned into a number.
        let mut retyped = json(&text);
        retyped["fields"][0]["type"]["fields"][0]["type"] = serde_json::json!("long");
        let retyped = Schema::parse(&retyped).unwrap();
        assert!(
            check(Level::Backward, &retyped, &old).is_err(),
            "{}: retyped field",
            kind.file_name()
        );

        // And the harmless change passes: a new optional field with a default.
        let mut optional = json(&text);
        optional["fields"].as_array_mut().unwrap().push(
            serde_json::json!({"name": "added_optional", "type": ["null", "string"], "default": null}),
        );
        let optional = Schema::parse(&optional).unwrap();
        assert!(
            check(Level::Backward, &optional, &old).is_ok(),
            "{}: optional field",
            kind.file_name()
        );
    }
}
