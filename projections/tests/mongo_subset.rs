//! The MongoDB operations the read models use, checked against the MongoDB-protocol server of
//! the local stack (FerretDB 1.24 on PostgreSQL), so a query outside the subset both it and real
//! MongoDB support fails here first.

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::options::{IndexOptions, InsertManyOptions};
use mongodb::{Client, IndexModel};

fn url() -> String {
    test_support::env::mongo_url()
}

#[tokio::test]
async fn the_subset_the_read_models_use() -> anyhow::Result<()> {
    let client = Client::with_uri_str(url()).await?;
    let db = client.database(&test_support::unique_ident("subset"));
    let messages = db.collection::<Document>("messages");
    messages
        .create_index(
            IndexModel::builder()
                .keys(doc! {"room_id": 1, "seq": -1})
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await?;

    // insert_many, unordered: duplicates of _id fail with 11000 and the rest goes in.
    let docs: Vec<Document> = (1..=5)
        .map(|i| doc! {"_id": format!("m{i}"), "room_id": "r", "seq": i as i64, "tokens": ["hello", format!("w{i}")], "last_seq": i as i64, "reactions": []})
        .collect();
    messages.insert_many(&docs[..3]).await?;
    let again = messages
        .insert_many(&docs)
        .with_options(InsertManyOptions::builder().ordered(false).build())
        .await;
    let err = again.expect_err("duplicates must be reported");
    let text = err.to_string();
    assert!(
        text.contains("11000") || text.to_lowercase().contains("duplicate"),
        "{text}"
    );
    assert_eq!(
        messages.count_documents(doc! {"room_id": "r"}).await?,
        5,
        "the non-duplicates went in"
    );

    // Guarded updates: applied once, a replay (same seq) changes nothing.
    for _ in 0..2 {
        messages
            .update_one(
                doc! {"_id": "m2", "last_seq": {"$lt": 10_i64}},
                doc! {"$set": {"last_seq": 10_i64, "content": "edited"}, "$push": {"reactions": {"user_id": "u", "emoji": "👍"}}},
            )
            .await?;
    }
    let m2 = messages.find_one(doc! {"_id": "m2"}).await?.unwrap();
    assert_eq!(m2.get_array("reactions")?.len(), 1);
    // Removing one reaction: the projector sets the remaining list (FerretDB's `$pull` by a
    // partial document, e.g. without the reaction's timestamp, removes nothing).
    messages
        .update_one(
            doc! {"_id": "m2"},
            doc! {"$push": {"reactions": {"user_id": "v", "emoji": "🎉", "timestamp": 1_i64}}},
        )
        .await?;
    messages
        .update_one(doc! {"_id": "m2"}, doc! {"$set": {"last_seq": 11_i64, "reactions": [{"user_id": "v", "emoji": "🎉", "timestamp": 1_i64}]}})
        .await?;
    assert_eq!(
        messages
            .find_one(doc! {"_id": "m2"})
            .await?
            .unwrap()
            .get_array("reactions")?
            .len(),
        1
    );

    // Search postings: inserted only, found by equality on an indexed key, with a projection.
    let search = db.collection::<Document>("search");
    search
        .create_index(IndexModel::builder().keys(doc! {"k": 1}).build())
        .await?;
    search
        .insert_many([
            doc! {"_id": "r:hello:0:1-3", "p": "r:hello:0", "k": "r:hello", "b": 0_i64, "s": [1_i64, 3_i64]},
            doc! {"_id": "r:hello:2", "k": "r:hello", "b": 2_i64},
            doc! {"_id": "r:other:0:1-1", "p": "r:other:0", "k": "r:other", "b": 0_i64, "s": [1_i64]},
        ])
        .await?;
    let directory: Vec<Document> = search
        .find(doc! {"k": "r:hello"})
        .projection(doc! {"b": 1})
        .await?
        .try_collect()
        .await?;
    let mut blocks: Vec<i64> = directory.iter().map(|d| d.get_i64("b").unwrap()).collect();
    blocks.sort();
    assert_eq!(blocks, [0, 2]);
    assert!(
        directory.iter().all(|d| !d.contains_key("s")),
        "{directory:?}"
    );

    // Upserts with $set / $inc / $max .
    let rooms = db.collection::<Document>("rooms");
    for _ in 0..2 {
        rooms
            .update_one(
                doc! {"_id": "r"},
                doc! {"$set": {"name": "x"}, "$inc": {"n": 1}, "$max": {"last_seq": 7_i64}},
            )
            .upsert(true)
            .await?;
    }
    let room = rooms.find_one(doc! {"_id": "r"}).await?.unwrap();
    assert_eq!(
        (
            room.get_i32("n")
                .ok()
                .map(i64::from)
                .or(room.get_i64("n").ok()),
            room.get_i64("last_seq")?
        ),
        (Some(2), 7)
    );

    // History buckets: upserted by `_id` with dotted `$set`s of numeric message fields, set
    // again on a replay, read back by `_id`; a message replaced whole.
    let history = db.collection::<Document>("history");
    for _ in 0..2 {
        history
            .update_one(
                doc! {"_id": "r:0"},
                doc! {"$set": {"room_id": "r", "b": 0_i64, "prev": -1_i64, "m.5": {"_id": "m5", "seq": 5_i64}, "m.7": {"_id": "m7", "seq": 7_i64}}},
            )
            .upsert(true)
            .await?;
    }
    history
        .update_one(
            doc! {"_id": "r:0"},
            doc! {"$set": {"m.5": {"_id": "m5", "seq": 5_i64, "content": "edited"}, "next": 3_i64}},
        )
        .await?;
    let bucket = history.find_one(doc! {"_id": "r:0"}).await?.unwrap();
    let m = bucket.get_document("m")?;
    assert_eq!(m.keys().collect::<Vec<_>>(), ["5", "7"]);
    assert_eq!(m.get_document("5")?.get_str("content")?, "edited");
    assert_eq!(bucket.get_i64("next")?, 3);
    messages
        .replace_one(
            doc! {"_id": "m1"},
            doc! {"_id": "m1", "room_id": "r", "seq": 1_i64, "content": "whole"},
        )
        .await?;
    assert_eq!(
        messages
            .find_one(doc! {"_id": "m1"})
            .await?
            .unwrap()
            .get_str("content")?,
        "whole"
    );

    // distinct.
    let distinct = messages.distinct("room_id", doc! {}).await?;
    assert_eq!(distinct.len(), 1);

    // File shares: documents added to a set once (replays too), pulled by the whole element.
    let files = db.collection::<Document>("files");
    for share in ["a", "b", "a"] {
        files
            .update_one(
                doc! {"_id": "f"},
                doc! {"$addToSet": {"shared": {"message_id": share, "room_id": "r"}}},
            )
            .upsert(true)
            .await?;
    }
    files
        .update_one(
            doc! {"_id": "f"},
            doc! {"$pull": {"shared": {"message_id": "a", "room_id": "r"}}},
        )
        .await?;
    let shared = files.find_one(doc! {"_id": "f"}).await?.unwrap();
    assert_eq!(
        shared.get_array("shared")?,
        &vec![mongodb::bson::Bson::Document(
            doc! {"message_id": "b", "room_id": "r"}
        )]
    );
    db.drop().await?;
    Ok(())
}
