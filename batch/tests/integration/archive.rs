//! The archiver against librdkafka's in-process broker: exact results, resumption from the
//! offsets in the tables (not from the consumer group), nothing re-read after a clean stop.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use datafusion::prelude::SessionContext;
use lambdaflow_batch::archive::{ArchiveStats, Archiver};
use lambdaflow_batch::lake::Lake;
use lambdaflow_common::config::Config;
use lambdaflow_common::sample::{Generator, Kind, Mix};
use lambdaflow_common::timestamp::now_micros;
use lambdaflow_kafka::embedded::EmbeddedBroker;
use lambdaflow_kafka::producer::Producer;
use tokio_util::sync::CancellationToken;

/// Produces `n` generated messages; returns (new unique valid, invalid) counts.
fn produce(
    brokers: &str,
    generator: &mut Generator,
    n: usize,
    ids: &mut HashSet<String>,
) -> (u64, u64) {
    let producer = Producer::bulk(brokers).unwrap();
    let mut pending = Vec::new();
    let (mut valid, mut invalid) = (0, 0);
    for _ in 0..n {
        let s = generator.next_event(now_micros());
        match s.kind {
            Kind::Invalid => invalid += 1,
            Kind::Valid | Kind::Late if ids.insert(s.key.clone()) => valid += 1,
            _ => {}
        }
        pending.push(
            producer
                .queue("events", s.key.as_bytes(), &s.payload)
                .unwrap(),
        );
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    drop(pending);
    (valid, invalid)
}

/// Runs an archiver until it has written `expected` rows (or, with `expected == 0`, for a
/// while), stops it cleanly and returns its counters.
async fn archive(config: &Arc<Config>, brokers: &str, expected: u64) -> Arc<ArchiveStats> {
    let archiver = Archiver::new(config.clone(), brokers);
    let stats = archiver.stats();
    let token = CancellationToken::new();
    let run = tokio::spawn(archiver.run(token.clone()));
    let started = Instant::now();
    let written = |s: &ArchiveStats| {
        s.archived.load(Ordering::Relaxed)
            + s.duplicates.load(Ordering::Relaxed)
            + s.quarantined.load(Ordering::Relaxed)
    };
    while written(&stats) < expected
        || (expected == 0 && started.elapsed() < Duration::from_millis(1500))
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "wrote {} of {expected}",
            written(&stats)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    token.cancel();
    run.await.unwrap().unwrap();
    stats
}

async fn count(url: &url::Url) -> u64 {
    let table = deltalake::open_table(url.clone()).await.unwrap();
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    ctx.table("t").await.unwrap().count().await.unwrap() as u64
}

/// An in-process broker with topic `events` of `partitions` partitions, and the demo config
/// archiving it into a lake in a temporary directory in chunks of 100 ms or `max_events`.
fn setup(partitions: i32, max_events: usize) -> (EmbeddedBroker, tempfile::TempDir, Config) {
    let cluster = EmbeddedBroker::start(&[("events", partitions)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::shop();
    config.kafka.brokers = cluster.bootstrap_servers().to_owned();
    config.lake.uri = dir.path().join("lake").display().to_string();
    config.archive.commit_interval = Duration::from_millis(100);
    config.archive.commit_max_events = max_events;
    (cluster, dir, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_exactly_and_resumes_from_the_table_offsets() {
    let (cluster, _dir, config) = setup(3, 250);
    let brokers = cluster.bootstrap_servers().to_owned();
    let config = Arc::new(config);
    let lake = Lake::new(&config.lake).unwrap();
    let (raw, quarantine) = (lake.raw("events"), lake.quarantine("events"));

    let mut generator = Generator::shop(
        3,
        200,
        Mix {
            duplicates: 0.1,
            late: 0.2,
            invalid: 0.05,
        },
    );
    let mut ids = HashSet::new();
    let (mut valid, invalid) = produce(&brokers, &mut generator, 2_000, &mut ids);
    // A valid-only tail leaves the quarantine table nothing to write in the last chunks: only
    // the seal at a clean stop records that those offsets were read.
    generator.set_mix(Mix::default());
    valid += produce(&brokers, &mut generator, 300, &mut ids).0;
    let stats = archive(&config, &brokers, 2_300).await;
    assert_eq!(stats.archived.load(Ordering::Relaxed), valid);
    assert_eq!(stats.quarantined.load(Ordering::Relaxed), invalid);
    assert_eq!(
        (count(&raw).await, count(&quarantine).await),
        (valid, invalid)
    );

    let idle = archive(&config, &brokers, 0).await;
    assert_eq!(
        idle.consumed.load(Ordering::Relaxed),
        0,
        "a clean restart re-reads nothing"
    );

    let (more_valid, more_invalid) = produce(&brokers, &mut generator, 500, &mut ids);
    archive(&config, &brokers, 500).await;
    assert_eq!(count(&raw).await, valid + more_valid);
    assert_eq!(count(&quarantine).await, invalid + more_invalid);
}

/// Live data files per `event_date` of the raw table.
/// Per date, the live files of the table at `url` that an append wrote (not a compaction),
/// and the bytes appends and compactions wrote in all.
async fn appended_files_per_date(url: &url::Url) -> (BTreeMap<String, usize>, u64, u64) {
    let table = deltalake::open_table(url.clone()).await.unwrap();
    let log = table.log_store();
    let (mut appended, mut merged) = (HashSet::new(), HashSet::new());
    let (mut appended_bytes, mut compacted_bytes) = (0, 0);
    for version in 0..=table.version().unwrap() {
        let entry = log.read_commit_entry(version).await.unwrap().unwrap();
        let actions: Vec<serde_json::Value> = String::from_utf8_lossy(&entry)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let optimize = actions
            .iter()
            .any(|a| a["commitInfo"]["operation"] == "OPTIMIZE");
        for add in actions.iter().filter_map(|a| a.get("add")) {
            let size = add["size"].as_u64().unwrap();
            if optimize {
                compacted_bytes += size;
                merged.insert(add["path"].as_str().unwrap().to_owned());
            } else {
                appended_bytes += size;
                appended.insert(add["path"].as_str().unwrap().to_owned());
            }
        }
    }
    let mut files = BTreeMap::new();
    for file in table.snapshot().unwrap().log_data().iter() {
        let date = file.partition_values_map().remove("event_date").flatten();
        let entry = files.entry(date.unwrap()).or_default();
        let path = file.path().to_string();
        assert!(
            appended.contains(&path) || merged.contains(&path),
            "{path} was added"
        );
        if appended.contains(&path) {
            *entry += 1;
        }
    }
    (files, appended_bytes, compacted_bytes)
}

/// The versions of the table at `url` whose commit is an OPTIMIZE.
async fn optimize_versions(url: &url::Url) -> Vec<u64> {
    let table = deltalake::open_table(url.clone()).await.unwrap();
    let log = table.log_store();
    let mut versions = Vec::new();
    for version in 0..=table.version().unwrap() {
        let entry = log.read_commit_entry(version).await.unwrap().unwrap();
        if String::from_utf8_lossy(&entry).contains(r#""operation":"OPTIMIZE""#) {
            versions.push(version);
        }
    }
    versions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacts_small_files_without_changing_rows_offsets_or_changed_dates() {
    let (cluster, _dir, mut config) = setup(2, 60);
    let brokers = cluster.bootstrap_servers().to_owned();
    config.archive.compact_min_files = 4;
    let config = Arc::new(config);
    let raw = Lake::new(&config.lake).unwrap().raw("events");

    let mut generator = Generator::shop(
        11,
        300,
        Mix {
            duplicates: 0.05,
            late: 0.3,
            invalid: 0.05,
        },
    );
    let mut ids = HashSet::new();
    let mut valid = 0;
    let mut produced = 0;
    for _ in 0..3 {
        valid += produce(&brokers, &mut generator, 600, &mut ids).0;
        produced += 600;
        archive(&config, &brokers, 600).await;
    }
    assert_eq!(count(&raw).await, valid, "compaction keeps every row once");

    let compactions = optimize_versions(&raw).await;
    assert!(
        !compactions.is_empty(),
        "30 commits of 4+ dates each compact some date"
    );
    let (files, appended, compacted) = appended_files_per_date(&raw).await;
    assert!(
        files.values().all(|n| *n < 4),
        "no date keeps 4 appended files: {files:?}"
    );
    assert!(
        compacted <= 3 * appended,
        "compactions wrote {compacted} bytes for {appended} appended: rows are rewritten once per tier"
    );
    let table = deltalake::open_table(raw.clone()).await.unwrap();
    let watermark = lambdaflow_batch::views::watermark::raw_watermark(&table, "events")
        .await
        .unwrap();
    let read: i64 = watermark.offsets.values().map(|o| o + 1).sum();
    assert_eq!(read, produced, "the txn offsets survive compaction");
    for version in compactions {
        let changed =
            lambdaflow_batch::views::watermark::dates_changed(&table, version - 1, version)
                .await
                .unwrap();
        assert_eq!(
            changed,
            Some(BTreeSet::new()),
            "version {version} changed no data"
        );
    }
    let idle = archive(&config, &brokers, 0).await;
    assert_eq!(
        idle.consumed.load(Ordering::Relaxed),
        0,
        "resumes after compaction"
    );
}

/// Vacuum writes to the tables the archiver appends to: a metadata commit turning off the
/// log cleanup of a table made before that, checkpoints, log cleanup. Run over and over while
/// the archiver commits every 100 ms and compacts, it must make no commit fail for good, lose
/// no row and store none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_beside_a_committing_archiver_loses_and_doubles_nothing() {
    use deltalake::table::config::TablePropertiesExt;
    use lambdaflow_batch::lake::vacuum::Vacuum;

    let (cluster, _dir, mut config) = setup(2, 40);
    let brokers = cluster.bootstrap_servers().to_owned();
    config.archive.compact_min_files = 4;
    config.lake.vacuum_retention = Duration::from_secs(600);
    config.lake.checkpoint_interval = 5;
    let config = Arc::new(config);
    let lake = Lake::new(&config.lake).unwrap();
    let raw = lake.raw("events");

    let mut generator = Generator::shop(17, 300, Mix::default());
    let mut ids = HashSet::new();
    let mut valid = produce(&brokers, &mut generator, 100, &mut ids).0;
    archive(&config, &brokers, 100).await;
    let table = deltalake::open_table(raw.clone()).await.unwrap();
    table
        .set_tbl_properties()
        .with_properties(std::collections::HashMap::from([(
            "delta.enableExpiredLogCleanup".to_owned(),
            "true".to_owned(),
        )]))
        .await
        .unwrap();

    valid += produce(&brokers, &mut generator, 3_000, &mut ids).0;
    let stop = CancellationToken::new();
    let vacuums = tokio::spawn({
        let (config, lake, stop) = (config.clone(), lake.clone(), stop.clone());
        async move {
            let mut passes = 0;
            while !stop.is_cancelled() {
                Vacuum::new(&config, &lake).run().await.unwrap();
                passes += 1;
            }
            passes
        }
    });
    archive(&config, &brokers, 3_000).await;
    stop.cancel();
    let passes = vacuums.await.unwrap();
    assert!(passes >= 2, "{passes} vacuum passes beside the archiver");

    assert_eq!(count(&raw).await, valid, "every valid event once");
    let table = deltalake::open_table(raw.clone()).await.unwrap();
    let snapshot = table.snapshot().unwrap();
    assert!(
        !snapshot.table_config().enable_expired_log_cleanup(),
        "vacuum turned delta-rs' own log cleanup off"
    );
    let watermark = lambdaflow_batch::views::watermark::raw_watermark(&table, "events")
        .await
        .unwrap();
    let read: i64 = watermark.offsets.values().map(|o| o + 1).sum();
    assert_eq!(read, 3_100, "the txn offsets cover every message read");
    assert!(
        !optimize_versions(&raw).await.is_empty(),
        "compactions ran beside vacuum too"
    );
}

/// A topic recreated empty (a fresh embedded broker plays it) restarts its offsets below
/// those the lake holds. The archiver must not drop the new events as already archived: it
/// halts the partitions and says why, an accepted reset starts a new epoch, the running
/// archiver resumes and archives every new event once, and a batch run after the reset has a
/// watermark in the new epoch, while a view computed before it covers nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_went_back_in_time_halts_until_the_reset_is_accepted() {
    use lambdaflow_batch::archive::accept_topic_reset;
    use lambdaflow_batch::lake::reader::LakeReader;
    use lambdaflow_batch::views::records::History;
    use lambdaflow_batch::views::run::BatchRun;

    let (old, _dir, mut config) = setup(2, 100);
    let lake = Lake::new(&config.lake).unwrap();
    let raw = lake.raw("events");
    let mut generator = Generator::shop(5, 100, Mix::default());
    let mut ids = HashSet::new();
    let old_brokers = old.bootstrap_servers().to_owned();
    let (valid, _) = produce(&old_brokers, &mut generator, 300, &mut ids);
    archive(&Arc::new(config.clone()), &old_brokers, 300).await;
    assert_eq!(count(&raw).await, valid);
    let history = History::new(&lake).unwrap();
    BatchRun::new(Arc::new(config.clone()), lake.clone(), history.clone())
        .run()
        .await
        .unwrap();
    let reader = LakeReader::from_lake(lake.clone());
    let before = reader
        .view(config.source(), &config.views[0])
        .await
        .unwrap();
    assert!(before.next_offset(0) > 40 && before.next_offset(1) > 40);
    drop(old);

    let fresh = EmbeddedBroker::start(&[("events", 2)]).unwrap();
    let brokers = fresh.bootstrap_servers().to_owned();
    config.kafka.brokers = brokers.clone();
    let config = Arc::new(config);
    let (new_valid, _) = produce(&brokers, &mut generator, 40, &mut ids);
    let archiver = Archiver::new(config.clone(), brokers.clone());
    let stats = archiver.stats();
    let token = CancellationToken::new();
    let run = tokio::spawn(archiver.run(token.clone()));
    let started = Instant::now();
    while stats.topic_resets().len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no reset reported: {:?}",
            stats.topic_resets()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for reset in stats.topic_resets() {
        assert!(reset.head < reset.lake_next, "{reset:?}");
        assert!(reset.to_string().contains("--accept-topic-reset"));
    }
    let metrics = prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap();
    assert!(
        metrics
            .contains(r#"lambdaflow_topic_reset_detected{component="archiver",partition="0",source="events"} 1"#),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stats.archived.load(Ordering::Relaxed), 0);
    assert_eq!(count(&raw).await, valid, "nothing archived while halted");

    let accepted = accept_topic_reset(&config, &brokers.as_str().into())
        .await
        .unwrap();
    assert_eq!(accepted, BTreeMap::from([(0, 1), (1, 1)]));
    assert!(
        accept_topic_reset(&config, &brokers.as_str().into())
            .await
            .unwrap()
            .is_empty(),
        "accepting twice changes nothing"
    );
    while stats.archived.load(Ordering::Relaxed) < new_valid {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "archived {} of {new_valid} after the reset",
            stats.archived.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stats.topic_resets().is_empty());
    token.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(count(&raw).await, valid + new_valid, "every new event once");

    let epochs = reader.raw_epochs(config.source(), "events").await.unwrap();
    assert_eq!(epochs, BTreeMap::from([(0, 1), (1, 1)]));
    let before = before.with_epochs(epochs.clone());
    assert_eq!(
        (before.next_offset(0), before.next_offset(1)),
        (0, 0),
        "a view computed before the reset covers nothing of the new epoch"
    );
    let record = BatchRun::new(config.clone(), lake.clone(), history)
        .run()
        .await
        .unwrap();
    let watermark = record.watermark.unwrap();
    assert_eq!(watermark.epochs, epochs);
    assert_eq!(
        watermark.offsets.values().map(|o| o + 1).sum::<i64>(),
        40,
        "the watermark covers the new epoch's offsets"
    );
    let after = reader
        .view(config.source(), &config.views[0])
        .await
        .unwrap()
        .with_epochs(epochs);
    assert_eq!(
        after.next_offset(0) + after.next_offset(1),
        40,
        "{:?}",
        after.watermark
    );
}
