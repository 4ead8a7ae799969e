//! The lambda invariant as a property: random events (late, duplicated, invalid) on
//! random partitions, archived and batched at random points, with the speed layer swapping in
//! each new batch version and restarting at random; at every check, batch ⊕ speed equals a
//! direct aggregation of the deduplicated valid events consumed — every group's states (HLL
//! sketches byte for byte) and every query at every granularity and group_by subset. Two
//! sources of the shop's shape on topics of different partition counts share the lake and
//! every batch run; their events share ids, which each source deduplicates on its own.
//! The property is checked with the batch layer local and on a Ballista cluster.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use lambdaflow_batch::archive::commit::OffsetTable;
use lambdaflow_batch::lake::reader::LakeReader;
use lambdaflow_batch::lake::{Lake, open_or_create, stored_ids};
use lambdaflow_batch::views::records::History;
use lambdaflow_batch::views::run::BatchRun;
use lambdaflow_common::batch_view::BatchView;
use lambdaflow_common::config::Config;
use lambdaflow_common::query::{AnswerLimits, Value, answer};
use lambdaflow_common::schema::{EVENT_DATE, raw_schema};
use lambdaflow_common::state::{State, ViewState};
use lambdaflow_common::timestamp::{MICROS_PER_DAY, now_micros};
use lambdaflow_common::validate::{Coordinates, Validator};
use lambdaflow_common::view::fingerprint;
use lambdaflow_serving::speed_layer::load_batch_view;
use lambdaflow_speed::engine::Speed;
use lambdaflow_speed::served::Served;
use lambdaflow_tests::cluster::BallistaCluster;
use lambdaflow_tests::{every_query, scratch_dir};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

/// The sources, each with the partition count of its topic.
const SOURCES: [(&str, usize); 2] = [("events", 3), ("returns", 2)];
/// The binary under test, which starts the Ballista cluster.
const BINARY: &str = env!("CARGO_BIN_EXE_lambdaflow-e2e");
/// 2026-11-20T00:00:00Z.
const BASE_US: i64 = 20_777 * MICROS_PER_DAY;
/// The Kafka timestamp of every message: events are judged against it (max_future, max_past).
const MESSAGE_US: i64 = BASE_US + 3 * MICROS_PER_DAY;
/// The source's `max_past` here: events before `MESSAGE_US - MAX_PAST_US` are too old.
const MAX_PAST_US: i64 = 60 * 3_600_000_000;
/// The demo source's `max_future`.
const MAX_FUTURE_US: i64 = MICROS_PER_DAY;

#[derive(Debug, Clone)]
enum Step {
    Produce(Vec<Message>),
    /// The archiver of a source reads the partitions whose bit is set (it reads partitions
    /// at different paces, so one may be archived further than another).
    Archive(usize, u8),
    Batch,
    Restart,
    Check,
    /// The `sales_by_country` filter changes (purchases ↔ carts) and the process restarts.
    Redefine,
    /// Kafka retention deletes every message both the archiver and the speed layer have read:
    /// a restarted speed layer finds offsets gone that no batch version may cover yet.
    Retain,
}

#[derive(Debug, Clone)]
struct Message {
    /// The source whose topic it is produced to.
    source: usize,
    id: u16,
    minute: i64,
    kind: usize,
    user: u8,
    amount: Option<u16>,
    broken: bool,
    /// A copy of the first message with this id, sent to another partition (a producer with
    /// another partitioner, or a partition count change).
    stray: bool,
    /// 1 to 4: the event time sits on an edge of the window the message's timestamp accepts
    /// (oldest accepted, 1 ms too old, latest accepted, 1 ms too late); otherwise `minute`.
    edge: u8,
}

impl Message {
    fn payload(&self) -> Vec<u8> {
        if self.broken {
            return format!("{{\"event_id\": \"e{}\", \"event_time\": 12", self.id).into_bytes();
        }
        let kind = ["purchase", "view", "cart"][self.kind];
        let country = ["kr", "us"][usize::from(self.user) % 2];
        let mut v = serde_json::json!({
            "event_id": format!("e{}", self.id),
            "event_time": self.event_time_us() / 1000,
            "type": kind,
            "user_id": format!("u{}", self.user),
            "country": country,
            "product": format!("p{}", self.id % 3),
        });
        if let Some(a) = self.amount {
            v["amount"] = (f64::from(a) / 8.0).into();
            v["quantity"] = i64::from(a % 4).into();
        }
        serde_json::to_vec(&v).unwrap()
    }

    fn event_time_us(&self) -> i64 {
        match self.edge {
            1 => MESSAGE_US - MAX_PAST_US,
            2 => MESSAGE_US - MAX_PAST_US - 1_000,
            3 => MESSAGE_US + MAX_FUTURE_US,
            4 => MESSAGE_US + MAX_FUTURE_US + 1_000,
            _ => BASE_US + self.minute * 60_000_000,
        }
    }

    /// Copies of an event share a key, so a partition.
    fn partition(&self) -> usize {
        usize::from(self.id) % SOURCES[self.source].1
    }
}

fn message() -> impl Strategy<Value = Message> {
    (
        0..SOURCES.len(),
        0u16..60,
        0i64..3 * 24 * 60,
        0usize..3,
        0u8..9,
        proptest::option::of(0u16..800),
        proptest::bool::weighted(0.05),
        proptest::bool::weighted(0.15),
        0u8..24,
    )
        .prop_map(
            |(source, id, minute, kind, user, amount, broken, stray, edge)| Message {
                source,
                id,
                minute,
                kind,
                user,
                amount,
                broken,
                stray,
                edge,
            },
        )
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => proptest::collection::vec(message(), 1..40).prop_map(Step::Produce),
        2 => (0..SOURCES.len(), 1u8..8).prop_map(|(source, bits)| Step::Archive(source, bits)),
        2 => Just(Step::Batch),
        1 => Just(Step::Restart),
        2 => Just(Step::Check),
        1 => Just(Step::Redefine),
        1 => Just(Step::Retain),
    ]
}

/// The world: a lake on disk shared by the sources, and per source a [`Feed`].
struct World {
    _dir: tempfile::TempDir,
    deployment: Arc<Config>,
    lake: Lake,
    feeds: Vec<Feed>,
}

/// One source: its topic in memory, its archiver's table, its speed layer.
struct Feed {
    config: Arc<Config>,
    validator: Validator,
    topic: Vec<Vec<Vec<u8>>>,
    raw: OffsetTable,
    archived: Vec<usize>,
    archived_ids: HashSet<(i32, String)>,
    speed: Speed,
    shared: Served,
    consumed: Vec<usize>,
    /// Per partition, the first offset Kafka still holds.
    deleted: Vec<usize>,
    /// Offset ranges (partition, first, last) the speed layer found deleted.
    lost: Vec<(usize, usize, usize)>,
}

/// The shop with `max_past`, and a second source of its shape, `returns`, with a copy of
/// each of its views, batched on `engine`.
fn deployment(lake: &std::path::Path, engine: &str) -> Config {
    let mut config = Config::shop();
    config.lake.uri = lake.display().to_string();
    config.batch.engine = engine.to_owned();
    config.sources[0].max_past = Some(std::time::Duration::from_micros(MAX_PAST_US as u64));
    let (name, _) = SOURCES[1];
    let mut returns = config.sources[0].clone();
    (returns.name, returns.topic) = (name.to_owned(), name.to_owned());
    config.sources.push(returns);
    let copies: Vec<_> = config
        .views
        .iter()
        .map(|view| lambdaflow_common::view::ViewDef {
            name: format!("{}_{name}", view.name),
            source: Some(name.to_owned()),
            ..view.clone()
        })
        .collect();
    config.views.extend(copies);
    config.check().unwrap();
    config
}

impl World {
    async fn new(engine: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let deployment = Arc::new(deployment(dir.path(), engine));
        let lake = Lake::new(&deployment.lake).unwrap();
        let mut feeds = Vec::new();
        for (source, partitions) in SOURCES {
            let config = Arc::new(deployment.scoped(deployment.source_named(source).unwrap()));
            feeds.push(Feed::new(config, &lake, partitions).await);
        }
        Self {
            _dir: dir,
            deployment,
            lake,
            feeds,
        }
    }

    /// Changes the filter of `sales_by_country` and restarts: its batch side is of the old
    /// definition until the next batch run.
    async fn redefine(&mut self) {
        let mut deployment = (*self.deployment).clone();
        let view = &mut deployment.views[0];
        view.filter = Some(match view.filter.as_deref() {
            Some("type = 'purchase'") => "type = 'cart'".to_owned(),
            _ => "type = 'purchase'".to_owned(),
        });
        self.deployment = Arc::new(deployment);
        for feed in &mut self.feeds {
            let source = self.deployment.source_named(&feed.config.source().name);
            feed.config = Arc::new(self.deployment.scoped(source.unwrap()));
        }
        self.restart().await;
    }

    async fn restart(&mut self) {
        for feed in &mut self.feeds {
            feed.restart(&self.lake).await;
        }
    }

    /// One batch run over every source, then each speed layer swaps in its views.
    async fn batch(&mut self) {
        let history = History::new(&self.lake).unwrap();
        let record = BatchRun::new(self.deployment.clone(), self.lake.clone(), history)
            .run()
            .await
            .unwrap();
        assert_eq!(record.engine, self.deployment.batch.engine);
        for feed in &mut self.feeds {
            feed.swap(&self.lake).await;
        }
    }

    fn check(&mut self) {
        for feed in &mut self.feeds {
            feed.check();
        }
    }
}

impl Feed {
    async fn new(config: Arc<Config>, lake: &Lake, partitions: usize) -> Self {
        let schema = raw_schema(config.source());
        let table = open_or_create(&lake.raw(&config.source().name), &schema, &[EVENT_DATE])
            .await
            .unwrap();
        let ids: Vec<i32> = (0..partitions as i32).collect();
        let raw = OffsetTable::load(table, (schema, EVENT_DATE), &config.source().topic, &ids)
            .await
            .unwrap();
        let shared = Served::new();
        let speed = speed_layer(&config, &shared, batch_views(&config, lake).await);
        Self {
            validator: Validator::new(config.source()),
            config,
            topic: vec![Vec::new(); partitions],
            raw,
            archived: vec![0; partitions],
            archived_ids: HashSet::new(),
            speed,
            shared,
            consumed: vec![0; partitions],
            deleted: vec![0; partitions],
            lost: Vec::new(),
        }
    }

    fn partitions(&self) -> usize {
        self.topic.len()
    }

    /// Validates messages `from[p]..` of every partition.
    fn validated(&self, from: &[usize]) -> (arrow::array::RecordBatch, BTreeMap<i32, i64>) {
        self.validated_of(from, u8::MAX)
    }

    /// Validates messages `from[p]..` of the partitions whose bit is set in `partitions`.
    fn validated_of(
        &self,
        from: &[usize],
        partitions: u8,
    ) -> (arrow::array::RecordBatch, BTreeMap<i32, i64>) {
        let mut builder = self
            .validator
            .batch_builder(&self.config.source().topic, now_micros());
        let mut upto = BTreeMap::new();
        for (p, messages) in self.topic.iter().enumerate() {
            if partitions & (1 << p) == 0 {
                continue;
            }
            for (offset, payload) in messages.iter().enumerate().skip(from[p]) {
                let at = Coordinates {
                    partition: p as i32,
                    offset: offset as i64,
                };
                let _ = builder.push_message(Some(payload), at, Some(MESSAGE_US));
                upto.insert(p as i32, offset as i64);
            }
        }
        (builder.finish().events, upto)
    }

    /// The archiver: first occurrences of everything produced to `partitions` (a bit each),
    /// one commit.
    async fn archive(&mut self, partitions: u8) {
        let (events, upto) = self.validated_of(&self.archived.clone(), partitions);
        let keep: arrow::array::BooleanArray = first_occurrences(&events, &mut self.archived_ids);
        let events = arrow::compute::filter_record_batch(&events, &keep).unwrap();
        self.raw.append(events, &upto).await.unwrap();
        for (p, archived) in self.archived.iter_mut().enumerate() {
            if partitions & (1 << p) != 0 {
                *archived = self.topic[p].len();
            }
        }
    }

    /// The raw table's ids at `version` for `date`.
    async fn raw_ids(&self, lake: &Lake, version: u64, date: i32) -> Vec<String> {
        let table = deltalake::DeltaTableBuilder::from_url(lake.raw(&self.config.source().name))
            .unwrap()
            .with_version(version)
            .load()
            .await
            .unwrap();
        let mut ids = Vec::new();
        stored_ids(&table, &self.config.source().id_field, date, |part| {
            ids.extend(part.iter().flatten().map(str::to_owned));
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .await
        .unwrap();
        ids
    }

    /// The speed layer consumes everything produced since it last did.
    async fn consume(&mut self, lake: &Lake) {
        for p in 0..self.partitions() {
            if self.consumed[p] < self.deleted[p] {
                self.lost.push((p, self.consumed[p], self.deleted[p] - 1));
                self.consumed[p] = self.deleted[p];
            }
        }
        let (events, upto) = self.validated(&self.consumed.clone());
        self.consumed = self.topic.iter().map(Vec::len).collect();
        for date in self.speed.dates_to_load(&events) {
            let ids = self.raw_ids(lake, self.speed.raw_version(), date).await;
            self.speed
                .load_ids(date, ids.iter().map(String::as_str))
                .unwrap();
        }
        self.speed.fold(events, &upto).unwrap();
    }

    /// Retention deletes what both the archiver and the speed layer have read.
    fn retain(&mut self) {
        for p in 0..self.partitions() {
            let read = self.archived[p].min(self.consumed[p]);
            self.deleted[p] = self.deleted[p].max(read);
        }
    }

    async fn restart(&mut self, lake: &Lake) {
        self.shared = Served::new();
        let batches = batch_views(&self.config, lake).await;
        self.speed = speed_layer(&self.config, &self.shared, batches);
        let starts = self
            .speed
            .start(&(0..self.partitions() as i32).collect::<Vec<_>>());
        self.consumed = starts.values().map(|o| *o as usize).collect();
        self.consume(lake).await;
    }

    /// The speed layer swaps in the views' latest batch versions.
    async fn swap(&mut self, lake: &Lake) {
        let swap: Vec<_> = batch_views(&self.config, lake)
            .await
            .into_iter()
            .map(Some)
            .collect();
        let mut raw = self.speed.swap_needs(&swap).unwrap();
        for (version, date) in raw.needed() {
            let ids = self.raw_ids(lake, version, date).await;
            raw.check(version, date, ids.iter().map(String::as_str));
        }
        self.speed.swap(swap, &raw).unwrap();
    }

    /// Direct aggregation of every first occurrence consumed, per view.
    fn direct(&self) -> Vec<ViewState> {
        let (events, _) = self.validated(&vec![0; self.partitions()]);
        let keep = first_occurrences(&events, &mut HashSet::new());
        self.config
            .views
            .iter()
            .map(|view| {
                let mut state = ViewState::new();
                let filtered = match &view.filter {
                    Some(filter) => {
                        // The filters here are all `type = '<kind>'`.
                        let wanted = filter.split('\'').nth(1).unwrap();
                        let kinds = events.column_by_name("type").unwrap();
                        let kinds = arrow::array::AsArray::as_string::<i32>(kinds.as_ref());
                        let chosen: arrow::array::BooleanArray =
                            kinds.iter().map(|k| Some(k == Some(wanted))).collect();
                        arrow::compute::and(&keep, &chosen).unwrap()
                    }
                    None => keep.clone(),
                };
                state
                    .fold(self.config.source(), view, &events, &filtered)
                    .unwrap();
                state
            })
            .collect()
    }

    /// Merged states against the direct aggregation, for every view whose answers the API would
    /// give: not one whose batch side is of another definition (503 `view_rebuilding`), and
    /// nothing while deleted offsets are not covered by a batch version (answers say
    /// `complete: false`).
    fn check(&mut self) {
        let direct = self.direct();
        let snapshot = self.shared.snapshot().unwrap();
        self.lost.retain(|(p, _, last)| {
            snapshot
                .pairs()
                .iter()
                .any(|pair| pair.batch().next_offset(*p as i32) <= *last as i64)
        });
        if !self.lost.is_empty() {
            return;
        }
        for ((view, pair), want) in self.config.views.iter().zip(snapshot.pairs()).zip(&direct) {
            let current = fingerprint(self.config.source(), view);
            if pair.batch().redefined(&current) {
                continue;
            }
            let mut merged = ViewState::new();
            merged.merge_into(view, &pair.batch().state);
            merged.merge_into(view, pair.speed());
            assert_states_equal(&view.name, &merged, want);
            for query in every_query(view) {
                let answered = |parts: &[&ViewState]| {
                    answer(
                        self.config.source(),
                        view,
                        parts,
                        &query,
                        &AnswerLimits::NONE,
                    )
                    .expect("no limits")
                };
                let got = answered(&[&pair.batch().state, pair.speed()]);
                let expected = answered(&[want]);
                let shape = (query.rollup, &query.group_by);
                assert_eq!(got.len(), expected.len(), "{} {shape:?}", view.name);
                for (g, e) in got.iter().zip(&expected) {
                    assert_eq!((g.bucket, &g.dimensions), (e.bucket, &e.dimensions));
                    for (a, b) in g.values.iter().zip(&e.values) {
                        assert!(close(a, b), "{} {shape:?}: {a:?} != {b:?}", view.name);
                    }
                }
            }
        }
    }
}

/// A speed layer that writes its retained first occurrences to disk every few rows, so that
/// swaps read them back from files as they do after a long batch interval.
fn speed_layer(config: &Arc<Config>, served: &Served, batches: Vec<Arc<BatchView>>) -> Speed {
    let mut speed = Speed::new(config.clone(), served.clone(), batches).unwrap();
    speed.set_segment_rows(3);
    speed
}

async fn batch_views(config: &Config, lake: &Lake) -> Vec<Arc<BatchView>> {
    let mut out = Vec::new();
    for view in &config.views {
        let reader = LakeReader::from_lake(lake.clone());
        out.push(Arc::new(
            load_batch_view(config, &reader, view).await.unwrap(),
        ));
    }
    out
}

/// Rows whose (event date, id) was not seen, remembering them.
fn first_occurrences(
    events: &arrow::array::RecordBatch,
    seen: &mut HashSet<(i32, String)>,
) -> arrow::array::BooleanArray {
    use arrow::array::AsArray;
    let ids = events.column(0).as_string::<i32>();
    let dates = events
        .column_by_name(EVENT_DATE)
        .unwrap()
        .as_primitive::<arrow::datatypes::Date32Type>();
    (0..events.num_rows())
        .map(|i| Some(seen.insert((dates.value(i), ids.value(i).to_owned()))))
        .collect()
}

fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

fn assert_states_equal(view: &str, got: &ViewState, want: &ViewState) {
    let index: BTreeMap<_, _> = want.groups().collect();
    assert_eq!(got.len(), want.len(), "{view}: group count");
    for (key, states) in got.groups() {
        let expected = index
            .get(key)
            .unwrap_or_else(|| panic!("{view}: unexpected group {key:?}"));
        for (g, e) in states.iter().zip(expected.iter()) {
            let same = match (g, e) {
                (State::Distinct(a), State::Distinct(b)) => a.to_bytes() == b.to_bytes(),
                (State::Sum(Some(a)), State::Sum(Some(b))) => {
                    (a.as_f64() - b.as_f64()).abs() <= 1e-9 * a.as_f64().abs().max(1.0)
                }
                (
                    State::Avg {
                        sum: Some(a),
                        count: c,
                    },
                    State::Avg {
                        sum: Some(b),
                        count: d,
                    },
                ) => c == d && (a - b).abs() <= 1e-9 * a.abs().max(1.0),
                _ => g == e,
            };
            assert!(same, "{view} {key:?}: {g:?} != {e:?}");
        }
    }
}

/// Plays `steps` with the batch layer on `engine` (`local`, or a Ballista cluster).
async fn play(steps: Vec<Step>, engine: &str) {
    let mut world = World::new(engine).await;
    // The first payload of each (source, id): a stray copy repeats it on another partition.
    let mut firsts: HashMap<(usize, u16), Vec<u8>> = HashMap::new();
    for step in steps {
        match step {
            Step::Produce(messages) => {
                for m in messages {
                    let feed = &mut world.feeds[m.source];
                    match firsts.get(&(m.source, m.id)) {
                        Some(first) if m.stray => {
                            let other = (m.partition() + 1) % feed.partitions();
                            feed.topic[other].push(first.clone());
                        }
                        _ => {
                            let payload = m.payload();
                            firsts
                                .entry((m.source, m.id))
                                .or_insert_with(|| payload.clone());
                            feed.topic[m.partition()].push(payload);
                        }
                    }
                }
                for feed in &mut world.feeds {
                    feed.consume(&world.lake).await;
                }
            }
            Step::Archive(source, partitions) => world.feeds[source].archive(partitions).await,
            Step::Batch => world.batch().await,
            Step::Restart => world.restart().await,
            Step::Check => world.check(),
            Step::Redefine => world.redefine().await,
            Step::Retain => world.feeds.iter_mut().for_each(Feed::retain),
        }
    }
    for feed in &mut world.feeds {
        feed.archive(u8::MAX).await;
    }
    world.batch().await;
    world.check();
    world.restart().await;
    world.check();
}

/// A copy of an event on another partition, archived before the partition the speed layer
/// read it from: the batch side counts the archived copy, so the speed side must drop its own.
#[test]
fn a_copy_archived_from_another_partition_counts_once() {
    let event = |stray| Message {
        source: 0,
        id: 2,
        minute: 90,
        kind: 0,
        user: 1,
        amount: Some(40),
        broken: false,
        stray,
        edge: 0,
    };
    let steps = vec![
        Step::Produce(vec![event(false)]),
        Step::Produce(vec![event(true)]),
        Step::Archive(0, 0b001),
        Step::Batch,
        Step::Check,
    ];
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(play(steps, "local"));
}

/// A filter change: until a batch run recomputes the view, its batch side is of the old
/// definition and is not compared (the API answers 503); afterwards every view is exact again,
/// also across a retention gap the restart finds.
#[test]
fn a_redefined_view_is_exact_again_after_its_batch_run() {
    let event = |(source, id), kind| Message {
        source,
        id,
        minute: 900 + i64::from(id),
        kind,
        user: 2,
        amount: Some(id * 3),
        broken: false,
        stray: false,
        edge: 0,
    };
    // Three purchases for every cart: the two filters give different answers.
    // Both sources get the same ids: each counts its own.
    let kind = |i: u16| if i.is_multiple_of(4) { 2 } else { 0 };
    let wave = |ids: std::ops::Range<u16>| {
        let both = ids.flat_map(|i| [(0, i), (1, i)]);
        both.map(|(source, i)| event((source, i), kind(i)))
            .collect()
    };
    let steps = vec![
        Step::Produce(wave(0..12)),
        Step::Archive(0, u8::MAX),
        Step::Archive(1, u8::MAX),
        Step::Batch,
        Step::Retain,
        Step::Redefine,
        Step::Check,
        Step::Produce(wave(12..20)),
        Step::Archive(0, u8::MAX),
        Step::Archive(1, u8::MAX),
        Step::Batch,
        Step::Check,
    ];
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(play(steps, "local"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, max_shrink_iters: 30, .. ProptestConfig::default() })]
    #[test]
    fn batch_plus_speed_equals_direct_aggregation(steps in proptest::collection::vec(step(), 1..14)) {
        tokio::runtime::Runtime::new().unwrap().block_on(play(steps, "local"));
    }
}

/// The same property with the batch layer on a Ballista cluster of two executors: the views
/// it publishes, merged with the speed layer, are exact at every check.
#[test]
fn batch_on_ballista_plus_speed_equals_direct_aggregation() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let logs = scratch_dir();
    let cluster = runtime.block_on(BallistaCluster::start(BINARY, logs.path()));
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 4,
        max_shrink_iters: 10,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let outcome = runner.run(&proptest::collection::vec(step(), 4..14), |steps| {
        runtime.block_on(play(steps, &cluster.engine));
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}; cluster logs in {}", logs.path().display());
    }
}
