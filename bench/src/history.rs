//! History and search on one very large room (1,000,000 messages by default), through the
//! public read API: what a user scrolling back or searching a busy room waits for.
//!
//! The room is written straight to the broker as the commands tier would write it (a
//! `RoomCreated` owned by a registered bench user, then the posts with gap-free seqs), the live
//! projectors fold it into FerretDB, and then pages (the newest, and `before` cursors spread
//! evenly over the room) and searches (common, rare and two-word queries) are timed one at a
//! time against query-api.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mongodb::bson::{Document, doc};
use rand::{Rng, SeedableRng};
use schemas::events::{MessagePosted, MessageType, RoomCreated, Visibility};
use schemas::{DomainEvent, Envelope};
use serde_json::{Value, json};

use crate::report;

#[derive(clap::Args)]
pub struct Args {
    /// Messages in the room.
    #[arg(long, default_value_t = 1_000_000)]
    messages: usize,
    /// History pages fetched (one at a time).
    #[arg(long, default_value_t = 1000)]
    pages: usize,
    /// Searches run (one at a time).
    #[arg(long, default_value_t = 300)]
    searches: usize,
    /// Messages per page.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

/// Words of the synthetic messages: the first few appear in most messages, the last in few.
const WORDS: &[&str] = &[
    "the",
    "deploy",
    "coffee",
    "meeting",
    "review",
    "build",
    "release",
    "lunch",
    "bug",
    "test",
    "design",
    "customer",
    "invoice",
    "kafka",
    "ferret",
    "postgres",
    "latency",
    "incident",
    "rollback",
    "migration",
    "dashboard",
    "weekend",
    "holiday",
    "birthday",
    "quarterly",
];

fn content(rng: &mut rand::rngs::StdRng, n: usize) -> String {
    // Zipf-like: word i is picked with weight 1/(i+1).
    let words = 6 + rng.gen_range(0..10);
    let mut text = String::new();
    for _ in 0..words {
        let mut i = 0;
        while i + 1 < WORDS.len() && rng.gen_bool(0.6) {
            i += 1 + rng.gen_range(0..2);
        }
        text.push_str(WORDS[i.min(WORDS.len() - 1)]);
        text.push(' ');
    }
    // A word only this message has, for searches that must find exactly one message.
    text.push_str(&format!("ticket{n}"));
    text
}

pub async fn run(args: Args, results: &Path) -> anyhow::Result<()> {
    let brokers = report::stack_env("CHAT_KAFKA_BROKERS")?;
    let registry = report::stack_env("CHAT_REGISTRY_URL")?;
    let commands = test_support::api::Api::new(report::stack_env("CHAT_COMMANDS_URL")?);
    let query_url = report::stack_env("CHAT_QUERY_URL")?;
    let mongo = mongodb::Client::with_uri_str(report::stack_env("CHAT_MONGO_URL")?).await?;
    let db = mongo.database(&std::env::var("CHAT_MONGO_DB").unwrap_or_else(|_| "chat".into()));

    let (user_id, username, password) = commands.register("hist").await?;
    let login = commands.login(&username, &password).await?;
    let token = login.body["access_token"]
        .as_str()
        .context("access_token")?
        .to_string();

    // The room, written in chunks as one writer would.
    let room = uuid::Uuid::now_v7().to_string();
    let writer = test_support::produce::Writer::new(&brokers, &registry).await?;
    let start_ms = schemas::envelope::now_ms() - 30 * 86_400_000;
    let envelope = |seq: i64| {
        let mut e = Envelope::for_room(room.clone(), seq, Some(user_id.clone()));
        e.occurred_at = start_ms + seq;
        e
    };
    writer
        .write(&[RoomCreated {
            envelope: envelope(1),
            name: "the big room".into(),
            visibility: Visibility::Public,
            topic: None,
            owner_id: user_id.clone(),
        }
        .into()])
        .await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let started = Instant::now();
    let mut seq = 1i64;
    while (seq as usize) <= args.messages {
        let chunk: Vec<DomainEvent> = (0..10_000.min(args.messages + 1 - seq as usize))
            .map(|_| {
                seq += 1;
                MessagePosted {
                    envelope: envelope(seq),
                    message_id: uuid::Uuid::now_v7().to_string(),
                    author_id: user_id.clone(),
                    content: content(&mut rng, seq as usize),
                    message_type: MessageType::Text,
                    reply_to: None,
                    attachments: Vec::new(),
                }
                .into()
            })
            .collect();
        writer.write(&chunk).await?;
    }
    let last_seq = seq;
    let write_seconds = started.elapsed().as_secs_f64();
    println!(
        "room {room}: {} messages written in {write_seconds:.1} s",
        args.messages
    );

    // The live history projector folds them in.
    let started = Instant::now();
    let mut reported = Instant::now();
    loop {
        let applied = db
            .collection::<Document>(read_model::ROOMS)
            .find_one(doc! {"_id": &room})
            .await?
            .and_then(|r| read_model::history::integer(&r, "last_seq"))
            .unwrap_or(0);
        if applied >= last_seq {
            break;
        }
        if reported.elapsed() > Duration::from_secs(15) {
            println!(
                "  projected {applied} of {last_seq} ({:.0} events/s)",
                applied as f64 / started.elapsed().as_secs_f64()
            );
            reported = Instant::now();
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("the history projector reached seq {applied} of {last_seq} in an hour");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let project_seconds = started.elapsed().as_secs_f64();
    let project_rate = args.messages as f64 / project_seconds;
    println!("  projected into FerretDB in {project_seconds:.1} s ({project_rate:.0} events/s)");

    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        let token = token.clone();
        let url = format!("{query_url}{path}");
        async move {
            let started = Instant::now();
            let response = http.get(&url).bearer_auth(&token).send().await?;
            let status = response.status();
            let body: Value = response.json().await?;
            if !status.is_success() {
                bail!("GET {url}: {status} {body}");
            }
            anyhow::Ok((started.elapsed(), body))
        }
    };

    // Pages: the newest, then `before` cursors spread evenly over the whole room.
    let mut pages = report::histogram(3);
    let mut newest = report::histogram(3);
    for i in 0..args.pages {
        let path = if i % 10 == 0 {
            format!("/v1/rooms/{room}/messages?limit={}", args.limit)
        } else {
            let before = rng.gen_range(2..=last_seq);
            format!(
                "/v1/rooms/{room}/messages?limit={}&before={before}",
                args.limit
            )
        };
        let (took, body) = get(path).await?;
        let count = body["messages"].as_array().map_or(0, Vec::len);
        if count == 0 {
            bail!("an empty history page: {body}");
        }
        let h = if i % 10 == 0 { &mut newest } else { &mut pages };
        h.record(took.as_micros() as u64)?;
    }
    println!(
        "  history page of {}: newest {}, anywhere {}",
        args.limit,
        report::latency_ms(&newest),
        report::latency_ms(&pages)
    );

    // Searches in the room: one common word, two words, a rare word, one message's own word.
    let mut searches = report::histogram(3);
    let mut by_kind: Vec<(&str, hdrhistogram::Histogram<u64>)> = Vec::new();
    for kind in ["common", "two words", "rare", "unique"] {
        let mut h = report::histogram(3);
        for _ in 0..args.searches / 4 {
            let q = match kind {
                "common" => "deploy".to_string(),
                "two words" => "coffee meeting".to_string(),
                "rare" => "quarterly".to_string(),
                _ => format!("ticket{}", rng.gen_range(2..=last_seq)),
            };
            let (took, body) = get(format!(
                "/v1/search?room_id={room}&limit=20&q={}",
                q.replace(' ', "%20")
            ))
            .await?;
            if body["messages"].as_array().is_none_or(Vec::is_empty) {
                bail!("search {q:?} found nothing: {body}");
            }
            h.record(took.as_micros() as u64)?;
            searches.record(took.as_micros() as u64)?;
        }
        println!("  search ({kind}): {}", report::latency_ms(&h));
        by_kind.push((kind, h));
    }

    // A client dropped with the runtime panics in the driver's pool (mongodb 3.9); closed here.
    drop(db);
    mongo.shutdown().await;
    report::write(
        results,
        "history",
        &json!({
            "benchmark": "history",
            "machine": report::machine(),
            "room_messages": args.messages,
            "write_seconds": write_seconds,
            "project_seconds": project_seconds,
            "project_events_per_second": project_rate,
            "page_limit": args.limit,
            "page_newest_ms": report::latency_ms(&newest),
            "page_anywhere_ms": report::latency_ms(&pages),
            "search_ms": report::latency_ms(&searches),
            "search_by_kind_ms": by_kind.iter().map(|(k, h)| json!({"query": k, "latency_ms": report::latency_ms(h)})).collect::<Vec<_>>(),
        }),
    )
}
