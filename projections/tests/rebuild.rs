//! `replay-tools rebuild` of every read model while its projector runs, then `verify`: the
//! new generations are live, the old ones are gone, the running projector followed the switch
//! (events written afterwards land in the new generation), and verify finds zero differences.

mod common;

use std::process::Command;

use common::ReadSide;
use projections::live;
use test_support::{bin_dir, env, scenario};

fn replay_tools(side: &ReadSide, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let output = Command::new(bin_dir().join("replay-tools"))
        .args(args)
        .env("CHAT_KAFKA_BROKERS", &side.brokers)
        .env("CHAT_REGISTRY_URL", env::registry_url())
        .env("CHAT_MONGO_URL", &side.mongo_url)
        .env("CHAT_MONGO_DB", &side.mongo_db)
        .env("CHAT_REDIS_URL", env::redis_url())
        .env("CHAT_REDIS_PREFIX", &side.redis_prefix)
        .env("CHAT_CLICKHOUSE_URL", env::clickhouse_url())
        .env("CHAT_CLICKHOUSE_DB", &side.clickhouse_db)
        .env("CHAT_PROJECTION_GROUP_PREFIX", &side.group_prefix)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}

#[tokio::test]
async fn rebuild_switches_generations_and_verify_finds_no_difference() -> anyhow::Result<()> {
    let side = ReadSide::new()?;
    let writer = side.writer().await?;
    writer
        .write(&scenario::chat(4, 4, 60, schemas::envelope::now_ms()).events)
        .await?;
    let projectors = ["mongo", "redis", "clickhouse"];
    let running = side.start(&projectors.join(","), 200)?;
    for p in projectors {
        running
            .caught_up(&side, p, &projections::topics_of(p).unwrap_or_default())
            .await?;
    }

    // Before: the first generations.
    let mongo = mongodb::Client::with_uri_str(&side.mongo_url).await?;
    let redis = platform::cache::connect(&env::redis_url()).await?;
    let clickhouse = projections::analytics::client(&env::clickhouse_url());
    assert_eq!(
        live::mongo_live(&mongo, &side.mongo_db).await?,
        side.mongo_db
    );
    assert_eq!(
        live::redis_live(&redis, &side.redis_prefix).await?,
        side.redis_prefix
    );
    let first_ch = format!("{}_g0", side.clickhouse_db);
    assert_eq!(
        live::clickhouse_current(&clickhouse, &side.clickhouse_db).await?,
        Some(first_ch.clone())
    );

    let (ok, out) = replay_tools(
        &side,
        &["rebuild", "mongo", "--from-time", "2026-01-01T00:00:00Z"],
    )?;
    assert!(!ok && out.contains("clickhouse only"), "{out}");

    let (ok, out) = replay_tools(
        &side,
        &["rebuild", "all", "--batch", "500", "--grace-secs", "2"],
    )?;
    assert!(ok, "rebuild failed:\n{out}");
    assert_eq!(out.matches("rebuilt ").count(), 3, "{out}");

    // After: new generations are live and the old ones are gone.
    let mongo_live = live::mongo_live(&mongo, &side.mongo_db).await?;
    assert_ne!(mongo_live, side.mongo_db);
    let names = mongo.list_database_names().await?;
    assert!(
        !names.contains(&side.mongo_db),
        "old history generation dropped: {names:?}"
    );
    assert!(names.contains(&mongo_live));
    let redis_live = live::redis_live(&redis, &side.redis_prefix).await?;
    assert_ne!(redis_live, side.redis_prefix);
    let mut conn = redis.clone();
    let old_keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}presence:*", side.redis_prefix))
        .query_async(&mut conn)
        .await?;
    assert!(
        old_keys.is_empty(),
        "old presence keys dropped: {old_keys:?}"
    );
    let ch_live = live::clickhouse_current(&clickhouse, &side.clickhouse_db).await?;
    assert!(ch_live.is_some() && ch_live.as_deref() != Some(first_ch.as_str()));
    let dbs: Vec<String> = clickhouse
        .query("SELECT name FROM system.databases")
        .fetch_all()
        .await?;
    assert!(
        !dbs.contains(&first_ch),
        "old analytics generation dropped: {dbs:?}"
    );

    // The running projectors followed: what is written now lands in the new generations.
    writer
        .write(&scenario::chat(2, 3, 20, schemas::envelope::now_ms()).events)
        .await?;
    for p in projectors {
        running
            .caught_up(&side, p, &projections::topics_of(p).unwrap_or_default())
            .await?;
    }
    for p in projectors {
        let (ok, out) = replay_tools(&side, &["verify", p])?;
        assert!(ok, "verify {p}:\n{out}");
        assert!(out.contains(" 0 differences"), "{out}");
    }
    // And the stable analyst names show everything through the new generation.
    let model = side
        .model(&projections::topics_of("clickhouse").unwrap_or_default())
        .await?;
    let diffs =
        projections::verify::verify_clickhouse(&clickhouse, &side.clickhouse_db, &model).await?;
    assert!(diffs.is_empty(), "{diffs:?}");

    // Redis here keeps nothing across a restart. The history generation's pointer is not in
    // it, so losing Redis does not send readers back to the dropped generation (it did when
    // the pointer lived in Redis).
    let mut conn = redis.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", side.redis_prefix))
        .query_async(&mut conn)
        .await?;
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
    }
    assert_eq!(live::mongo_live(&mongo, &side.mongo_db).await?, mongo_live);

    let (ok, out) = replay_tools(&side, &["lag"])?;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("{}mongo", side.group_prefix)),
        "{out}"
    );
    Ok(())
}
