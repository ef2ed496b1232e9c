//! Avro in Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro binary) via
//! `schema_registry_converter`.
//!
//! Subject naming: `TopicRecordNameStrategy`, i.e. `<topic>-<fully.qualified.Record>` (for
//! example `chat.room-events-chat.events.MessagePosted`). Writers register their own schema on
//! first use (the registry answers the existing id when it is already there and 409 when it
//! breaks BACKWARD compatibility), so a writer always encodes with exactly the schema it was
//! built with. Readers fetch the writer's schema by the id in the record and resolve the value
//! against their own compiled-in schema, so an old reader ignores fields added later and a new
//! reader fills defaults for fields an old writer did not know. A record written with exactly
//! the reader's schema (every record of the current release) skips that resolution: it copies
//! the whole value tree and was a quarter of a rebuild's time.

use std::collections::HashMap;
use std::sync::RwLock;

use apache_avro::Schema;
use apache_avro::types::Value;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{SrSettings, get_schema_by_id};
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

use crate::{DomainEvent, EventKind, SchemaError};

pub struct EventCodec {
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    strategies: HashMap<EventKind, SubjectNameStrategy>,
    readers: HashMap<EventKind, Schema>,
    settings: SrSettings,
    /// Per writer schema id: whether it is exactly the reader's schema of its record (the
    /// value then needs no resolution). Learnt once per id.
    same_as_reader: RwLock<HashMap<u32, bool>>,
}

impl EventCodec {
    /// `registry_url`: base URL of a Confluent-compatible registry, e.g. [`DEFAULT_REGISTRY_URL`].
    pub fn new(registry_url: &str) -> Result<Self, SchemaError> {
        let settings = SrSettings::new_builder(registry_url.trim_end_matches('/').to_string())
            .no_proxy()
            .set_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| SchemaError::Registry(e.to_string()))?;
        let mut strategies = HashMap::new();
        let mut readers = HashMap::new();
        for &kind in EventKind::ALL {
            let schema = kind.parsed_schema()?;
            // Send the compact form: the registry normalizes anyway, and it keeps requests small.
            let compact = serde_json::from_str::<serde_json::Value>(kind.schema_source())
                .map(|v| v.to_string())
                .map_err(|e| SchemaError::BundledSchema {
                    file: kind.file_name(),
                    reason: e.to_string(),
                })?;
            strategies.insert(
                kind,
                SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
                    kind.topic().name().to_string(),
                    SuppliedSchema::new(
                        Some(kind.record_name().to_string()),
                        SchemaType::Avro,
                        compact,
                    ),
                ),
            );
            readers.insert(kind, schema);
        }
        Ok(Self {
            encoder: AvroEncoder::new(settings.clone()),
            decoder: AvroDecoder::new(settings.clone()),
            strategies,
            readers,
            settings,
            same_as_reader: RwLock::new(HashMap::new()),
        })
    }

    /// Registers every schema of the catalog and returns the ids. Services call this at start-up
    /// so an incompatible schema stops the deploy instead of the first write, and so the first
    /// real event does not pay for the round trips.
    pub async fn register_all(&self) -> Result<Vec<(EventKind, u32)>, SchemaError> {
        let mut ids = Vec::with_capacity(EventKind::ALL.len());
        for &kind in EventKind::ALL {
            let schema = self
                .encoder
                .get_schema_and_id(&kind.subject(), self.strategy(kind)?.clone())
                .await
                .map_err(|e| SchemaError::Registry(format!("{}: {e}", kind.subject())))?;
            ids.push((kind, schema.id));
        }
        Ok(ids)
    }

    fn strategy(&self, kind: EventKind) -> Result<&SubjectNameStrategy, SchemaError> {
        self.strategies
            .get(&kind)
            .ok_or_else(|| SchemaError::UnknownRecord {
                record: kind.record_name().to_string(),
            })
    }

    /// Encodes a valid event (see [`DomainEvent::validate`]) in Confluent wire format.
    pub async fn encode(&self, event: &DomainEvent) -> Result<Vec<u8>, SchemaError> {
        event.validate()?;
        let kind = event.kind();
        let value = event.to_avro().map_err(|e| SchemaError::Mismatch {
            record: kind.record_name().to_string(),
            reason: e.to_string(),
        })?;
        self.encoder
            .encode_value(value, self.strategy(kind)?)
            .await
            .map_err(|e| SchemaError::Registry(format!("encoding {}: {e}", kind.as_str())))
    }

    /// Decodes a record value written by any version of any event's schema.
    pub async fn decode(&self, payload: &[u8]) -> Result<DomainEvent, SchemaError> {
        let decoded = self
            .decoder
            .decode(Some(payload))
            .await
            .map_err(|e| self.decode_error(e))?;
        let record = decoded.name.map(|n| n.fullname(None)).ok_or_else(|| {
            SchemaError::Undecodable("the writer schema is not a named record".into())
        })?;
        let kind =
            EventKind::from_record_name(&record).ok_or_else(|| SchemaError::UnknownRecord {
                record: record.clone(),
            })?;
        let reader = self
            .readers
            .get(&kind)
            .ok_or_else(|| SchemaError::UnknownRecord {
                record: record.clone(),
            })?;
        let mismatch = |e: apache_avro::Error| SchemaError::Mismatch {
            record: record.clone(),
            reason: e.to_string(),
        };
        if self.written_with_reader(payload, kind, reader).await? {
            return DomainEvent::from_avro(kind, &decoded.value).map_err(mismatch);
        }
        let resolved: Value = decoded.value.resolve(reader).map_err(mismatch)?;
        DomainEvent::from_avro(kind, &resolved).map_err(mismatch)
    }

    /// Decodes the Avro body of a `kind` record written with this build's own schema (what
    /// [`Self::decode`] does once the registry named that schema), with no registry involved:
    /// the fuzz target (`fuzz/`) feeds it hostile bytes, which must be refused, never panic.
    pub fn decode_datum(
        &self,
        kind: EventKind,
        mut datum: &[u8],
    ) -> Result<DomainEvent, SchemaError> {
        let schema = self
            .readers
            .get(&kind)
            .ok_or_else(|| SchemaError::UnknownRecord {
                record: kind.record_name().to_string(),
            })?;
        let undecodable = |e: apache_avro::Error| SchemaError::Undecodable(e.to_string());
        let value = apache_avro::reader::datum::GenericDatumReader::builder(schema)
            .build()
            .map_err(undecodable)?
            .read_value(&mut datum)
            .map_err(undecodable)?;
        DomainEvent::from_avro(kind, &value).map_err(|e| SchemaError::Mismatch {
            record: kind.record_name().to_string(),
            reason: e.to_string(),
        })
    }

    /// Whether `payload` (already decoded, so in wire format) was written with exactly
    /// `reader`, the schema this build reads `kind` with: the same parsed schema, logical types
    /// and defaults included.
    async fn written_with_reader(
        &self,
        payload: &[u8],
        kind: EventKind,
        reader: &Schema,
    ) -> Result<bool, SchemaError> {
        let Some(id) = payload
            .get(1..5)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
        else {
            return Ok(false);
        };
        if let Some(same) = self.known(id) {
            return Ok(same);
        }
        let writer = get_schema_by_id(id, &self.settings)
            .await
            .map_err(|e| SchemaError::Registry(format!("schema {id}: {e}")))?;
        // Compared as parsed (names fully qualified, logical types and defaults kept): the
        // registry hands back its own normal form of the text, e.g. without a nested record's
        // namespace when it is the enclosing one.
        let form = |s: &Schema| serde_json::to_value(s).ok();
        let same = Schema::parse_str(&writer.schema)
            .ok()
            .and_then(|writer| form(&writer))
            .is_some_and(|writer| Some(writer) == form(reader));
        tracing::debug!(id, kind = kind.as_str(), same, "writer schema learnt");
        self.same_as_reader
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, same);
        Ok(same)
    }

    /// Tells a registry that did not answer (transient: retry) from a record that cannot be
    /// decoded (permanent). The converter marks network failures and 502/503 retriable; other
    /// 5xx answers it does not, and caches them as the schema's answer, so those are dropped
    /// from its cache and reported transient too.
    fn decode_error(&self, e: schema_registry_converter::error::SRCError) -> SchemaError {
        let server_failed = e.error.contains("failed with status 5");
        if e.retriable || server_failed {
            if server_failed {
                self.decoder.remove_errors_from_cache();
            }
            SchemaError::Registry(format!("decoding: {e}"))
        } else {
            SchemaError::Undecodable(e.to_string())
        }
    }

    fn known(&self, id: u32) -> Option<bool> {
        self.same_as_reader
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
    }
}
