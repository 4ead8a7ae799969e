//! Batch views against the truth: random events appended to the raw table in random chunks,
//! with incremental runs in between, give the same view tables as one full recompute and as a
//! direct aggregation of the events in plain Rust (sketches byte for byte).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::compute::cast;
use datafusion::common::ScalarValue;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use lambdaflow_batch::archive::commit::OffsetTable;
use lambdaflow_batch::lake::reader::{LakeReader, TravelError};
use lambdaflow_batch::lake::retention::Expire;
use lambdaflow_batch::lake::status::status;
use lambdaflow_batch::lake::vacuum::{Vacuum, Vacuumed};
use lambdaflow_batch::lake::{Lake, open_or_create, partition_dates};
use lambdaflow_batch::views::lock::BatchLock;
use lambdaflow_batch::views::records::{History, Mode, RunStatus, TaskState};
use lambdaflow_batch::views::run::BatchRun;
use lambdaflow_common::batch_view::BatchView;
use lambdaflow_common::config::Config;
use lambdaflow_common::layout::{Role, ViewLayout};
use lambdaflow_common::query::{AnswerLimits, AsOf, Query, answer};
use lambdaflow_common::retention::Retention;
use lambdaflow_common::schema::{EVENT_DATE, raw_schema};
use lambdaflow_common::sketch::Sketch;
use lambdaflow_common::timestamp::{MICROS_PER_DAY, format_date, now_micros};
use lambdaflow_common::validate::{Coordinates, Validator};
use lambdaflow_common::view::{AggKind, ViewDef, fingerprint};
use proptest::prelude::*;

/// 2026-11-20T00:00:00Z in epoch microseconds.
const BASE_US: i64 = 20_777 * MICROS_PER_DAY;
const PARTITIONS: i32 = 3;
const TYPES: [&str; 3] = ["purchase", "view", "cart"];
const COUNTRIES: [&str; 3] = ["kr", "US", " de "];

#[derive(Debug, Clone)]
struct Event {
    id: usize,
    time_us: i64,
    kind: usize,
    user: usize,
    country: usize,
    product: Option<usize>,
    /// Quarters, so that float sums are exact in any order.
    amount: Option<u32>,
    quantity: Option<i64>,
}

impl Event {
    fn json(&self) -> Vec<u8> {
        let mut v = serde_json::json!({
            "event_id": format!("e{}", self.id),
            "event_time": self.time_us / 1000,
            "type": TYPES[self.kind],
            "user_id": format!("u{}", self.user),
            "country": COUNTRIES[self.country],
        });
        if let Some(p) = self.product {
            v["product"] = format!("p{p}").into();
        }
        if let Some(a) = self.amount {
            v["amount"] = (f64::from(a) / 4.0).into();
        }
        if let Some(q) = self.quantity {
            v["quantity"] = q.into();
        }
        serde_json::to_vec(&v).unwrap()
    }

    /// The value of a field as the validator stores it (normalised).
    fn field(&self, name: &str) -> ScalarValue {
        match name {
            "type" => ScalarValue::Utf8(Some(TYPES[self.kind].into())),
            "user_id" => ScalarValue::Utf8(Some(format!("u{}", self.user))),
            "country" => ScalarValue::Utf8(Some(COUNTRIES[self.country].trim().to_uppercase())),
            "product" => ScalarValue::Utf8(self.product.map(|p| format!("p{p}"))),
            "amount" => ScalarValue::Float64(self.amount.map(|a| f64::from(a) / 4.0)),
            "quantity" => ScalarValue::Int64(self.quantity),
            other => panic!("field {other} not generated"),
        }
    }
}

fn event() -> impl Strategy<Value = Event> {
    (
        0i64..3 * 24 * 60,
        0usize..3,
        0usize..12,
        0usize..3,
        proptest::option::of(0usize..3),
        proptest::option::of(0u32..400),
        proptest::option::of(0i64..5),
    )
        .prop_map(
            |(minute, kind, user, country, product, amount, quantity)| Event {
                id: 0,
                time_us: BASE_US + minute * 60_000_000 + 17_000_000,
                kind,
                user,
                country,
                product,
                amount,
                quantity,
            },
        )
}

/// The rows of `view` over `events`, computed directly: key (bucket, dimensions) → row.
fn direct(config: &Config, view: &ViewDef, events: &[Event]) -> Vec<Vec<ScalarValue>> {
    let layout = ViewLayout::new(config.source(), view).unwrap();
    if let Some(filter) = &view.filter {
        assert_eq!(
            filter, "type = 'purchase'",
            "the reference knows one filter"
        );
    }
    let mut groups: BTreeMap<(i64, Vec<String>), Vec<&Event>> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| view.filter.is_none() || e.kind == 0)
    {
        let dims = view
            .dimensions
            .iter()
            .map(|d| format!("{:?}", e.field(d)))
            .collect();
        groups
            .entry((view.granularity.truncate(e.time_us), dims))
            .or_default()
            .push(e);
    }
    let mut rows = Vec::new();
    for ((bucket, _), members) in groups {
        let mut row = vec![ScalarValue::TimestampMicrosecond(
            Some(bucket),
            Some("UTC".into()),
        )];
        row.extend(view.dimensions.iter().map(|d| members[0].field(d)));
        for c in &layout.measures {
            let m = &view.measures[c.measure];
            let values: Vec<ScalarValue> = m
                .field
                .as_deref()
                .map(|f| {
                    members
                        .iter()
                        .map(|e| e.field(f))
                        .filter(|v| !v.is_null())
                        .collect()
                })
                .unwrap_or_default();
            let fold = |pick: fn(&ScalarValue, &ScalarValue) -> bool| {
                values.iter().fold(None::<ScalarValue>, |acc, v| match acc {
                    Some(a) if !pick(v, &a) => Some(a),
                    _ => Some(v.clone()),
                })
            };
            let float_sum = || {
                values
                    .iter()
                    .map(|v| {
                        f64::try_from(v.clone())
                            .unwrap_or_else(|_| i64::try_from(v.clone()).unwrap() as f64)
                    })
                    .sum::<f64>()
            };
            let value = match c.role {
                Role::Count => ScalarValue::Int64(Some(members.len() as i64)),
                Role::Sum if values.is_empty() => ScalarValue::try_from(&c.data_type).unwrap(),
                Role::Sum if c.data_type == arrow::datatypes::DataType::Int64 => {
                    ScalarValue::Int64(Some(
                        values
                            .iter()
                            .map(|v| i64::try_from(v.clone()).unwrap())
                            .sum(),
                    ))
                }
                Role::Sum => ScalarValue::Float64(Some(float_sum())),
                Role::Min => {
                    fold(|v, a| v < a).unwrap_or(ScalarValue::try_from(&c.data_type).unwrap())
                }
                Role::Max => {
                    fold(|v, a| v > a).unwrap_or(ScalarValue::try_from(&c.data_type).unwrap())
                }
                Role::AvgSum => ScalarValue::Float64((!values.is_empty()).then(float_sum)),
                Role::AvgCount => ScalarValue::Int64(Some(values.len() as i64)),
                Role::Avg => ScalarValue::Float64(
                    (!values.is_empty()).then(|| float_sum() / values.len() as f64),
                ),
                Role::Sketch | Role::Estimate => {
                    assert_eq!(m.agg, AggKind::ApproxDistinct);
                    let mut s = Sketch::new();
                    for v in &values {
                        s.insert_str(&v.to_string());
                    }
                    if c.role == Role::Sketch {
                        ScalarValue::Binary(Some(s.to_bytes()))
                    } else {
                        ScalarValue::Int64(Some(s.estimate() as i64))
                    }
                }
            };
            row.push(value);
        }
        row.push(ScalarValue::Date32(Some(
            bucket.div_euclid(MICROS_PER_DAY) as i32
        )));
        rows.push(row);
    }
    sorted(rows)
}

fn sorted(mut rows: Vec<Vec<ScalarValue>>) -> Vec<Vec<ScalarValue>> {
    rows.sort_by_key(|r| format!("{r:?}"));
    rows
}

/// Every row of a view table, cast to the view's declared types.
async fn read_view(lake: &Lake, config: &Config, view: &ViewDef) -> Vec<Vec<ScalarValue>> {
    let layout = ViewLayout::new(config.source(), view).unwrap();
    let table = DeltaTable::try_from_url(lake.view(&view.name))
        .await
        .unwrap();
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("v", table.table_provider().await.unwrap())
        .unwrap();
    let batches = ctx
        .sql("SELECT * FROM v")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut rows = Vec::new();
    for batch in batches {
        let columns: Vec<_> = layout
            .schema
            .fields()
            .iter()
            .map(|f| cast(batch.column_by_name(f.name()).unwrap(), f.data_type()).unwrap())
            .collect();
        for i in 0..batch.num_rows() {
            rows.push(
                columns
                    .iter()
                    .map(|c| ScalarValue::try_from_array(c, i).unwrap())
                    .collect(),
            );
        }
    }
    sorted(rows)
}

struct Lakehouse {
    _dir: tempfile::TempDir,
    config: Arc<Config>,
    lake: Lake,
    raw: OffsetTable,
    next_offset: BTreeMap<i32, i64>,
}

impl Lakehouse {
    async fn new() -> Self {
        Self::with_parallelism(Config::shop().batch.parallelism).await
    }

    /// A lake whose batch runs recompute and publish `parallelism` views at once.
    async fn with_parallelism(parallelism: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::shop();
        config.batch.parallelism = parallelism;
        config.lake.uri = dir.path().to_str().unwrap().to_owned();
        let lake = Lake::new(&config.lake).unwrap();
        let schema = raw_schema(config.source());
        let table = open_or_create(&lake.raw(&config.source().name), &schema, &[EVENT_DATE])
            .await
            .unwrap();
        let partitions: Vec<i32> = (0..PARTITIONS).collect();
        let raw = OffsetTable::load(
            table,
            (schema, EVENT_DATE),
            &config.source().topic,
            &partitions,
        )
        .await
        .unwrap();
        Self {
            _dir: dir,
            config: Arc::new(config),
            lake,
            raw,
            next_offset: BTreeMap::new(),
        }
    }

    /// Appends `events` as the archiver would: one commit, offsets per partition.
    async fn append(&mut self, events: &[Event]) {
        let validator = Validator::new(self.config.source());
        let mut builder = validator.batch_builder(&self.config.source().topic, now_micros());
        let mut upto = BTreeMap::new();
        for e in events {
            let partition = e.id as i32 % PARTITIONS;
            let offset = self.next_offset.entry(partition).or_insert(0);
            builder
                .push(
                    Some(&e.json()),
                    Coordinates {
                        partition,
                        offset: *offset,
                    },
                )
                .unwrap();
            upto.insert(partition, *offset);
            *offset += 1;
        }
        let validated = builder.finish();
        assert_eq!(validated.events.num_rows(), events.len());
        self.raw.append(validated.events, &upto).await.unwrap();
    }

    fn run(&self) -> BatchRun {
        BatchRun::new(
            self.config.clone(),
            self.lake.clone(),
            History::new(&self.lake).unwrap(),
        )
    }

    async fn views(&self) -> Vec<Vec<Vec<ScalarValue>>> {
        let mut all = Vec::new();
        for view in &self.config.views {
            all.push(read_view(&self.lake, &self.config, view).await);
        }
        all
    }
}

async fn check(mut events: Vec<Event>, cuts: Vec<usize>, runs: Vec<bool>) {
    for (i, e) in events.iter_mut().enumerate() {
        e.id = i;
    }
    let mut house = Lakehouse::new().await;
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (events.len() + 1)).collect();
    bounds.extend([0, events.len()]);
    bounds.sort_unstable();
    bounds.dedup();
    for (i, pair) in bounds.windows(2).enumerate() {
        house.append(&events[pair[0]..pair[1]]).await;
        if runs.get(i).copied().unwrap_or(false) {
            let record = house.run().run().await.unwrap();
            assert_eq!(record.status, RunStatus::Succeeded);
        }
    }
    let last = house.run().run().await.unwrap();
    assert_eq!(
        last.watermark.as_ref().unwrap().offsets.len(),
        PARTITIONS as usize
    );
    let incremental = house.views().await;
    let expected: Vec<_> = house
        .config
        .views
        .iter()
        .map(|v| direct(&house.config, v, &events))
        .collect();
    assert!(!expected[1].is_empty(), "every event is traffic");
    for ((view, got), want) in house.config.views.iter().zip(&incremental).zip(&expected) {
        assert_eq!(got.len(), want.len(), "{}: row count", view.name);
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g, w, "{}", view.name);
        }
    }
    let unchanged = house.run().run().await.unwrap();
    assert!(unchanged.views.iter().all(|v| v.mode == Mode::Unchanged));
    let full = house.run().with_full(true).run().await.unwrap();
    assert!(full.views.iter().all(|v| v.mode == Mode::Full));
    assert_eq!(
        house.views().await,
        incremental,
        "full recompute differs from incremental"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, max_shrink_iters: 20, .. ProptestConfig::default() })]
    #[test]
    fn incremental_runs_equal_a_full_recompute_and_direct_aggregation(
        events in proptest::collection::vec(event(), 1..150),
        cuts in proptest::collection::vec(0usize..1000, 0..4),
        runs in proptest::collection::vec(any::<bool>(), 5),
    ) {
        tokio::runtime::Runtime::new().unwrap().block_on(check(events, cuts, runs));
    }
}

/// Views recomputed and published one at a time and four at a time are the same tables, and
/// each run records its graph: every view's recompute before its publish, every task done.
#[tokio::test]
async fn parallel_runs_publish_what_sequential_runs_do() {
    let events: Vec<Event> = (0..400)
        .map(|id| Event {
            id,
            time_us: BASE_US + (id as i64 % 9) * MICROS_PER_DAY + id as i64 * 7_000_000,
            kind: id % 3,
            user: id % 37,
            country: id % 3,
            product: Some(id % 5),
            amount: Some(id as u32 % 11),
            quantity: Some(1 + id as i64 % 3),
        })
        .collect();
    let mut tables = Vec::new();
    for parallelism in [1, 4] {
        let mut house = Lakehouse::with_parallelism(parallelism).await;
        house.append(&events[..250]).await;
        house.run().run().await.unwrap();
        house.append(&events[250..]).await;
        let record = house.run().run().await.unwrap();
        assert_eq!(record.status, RunStatus::Succeeded);
        let views = house.config.views.len();
        assert_eq!(record.tasks.len(), 1 + 2 * views + 1);
        assert_eq!(record.edges.len(), 3 * views);
        assert!(
            record
                .tasks
                .iter()
                .all(|t| t.state == TaskState::Succeeded && t.attempts == 1)
        );
        for view in &house.config.views {
            let task = |kind: &str| {
                let id = format!("{kind}:{}", view.name);
                record.tasks.iter().find(|t| t.id == id).unwrap().clone()
            };
            assert!(task("publish").started_at >= task("recompute").finished_at);
        }
        let names: Vec<&str> = record.views.iter().map(|v| v.name.as_str()).collect();
        let configured: Vec<&str> = house.config.views.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, configured, "outcomes in config order");
        tables.push(house.views().await);
    }
    assert_eq!(tables[0], tables[1]);
    assert!(tables[0].iter().all(|rows| !rows.is_empty()));
}

#[tokio::test]
async fn a_late_event_recomputes_its_date_only() {
    let mut house = Lakehouse::new().await;
    let day = |d: i64, id: usize| Event {
        id,
        time_us: BASE_US + d * MICROS_PER_DAY + 3_600_000_000,
        kind: 0,
        user: id,
        country: 0,
        product: Some(1),
        amount: Some(4),
        quantity: Some(1),
    };
    house.append(&[day(0, 0), day(1, 1), day(2, 2)]).await;
    let first = house.run().run().await.unwrap();
    assert!(
        first
            .views
            .iter()
            .all(|v| v.mode == Mode::Full && v.dates == 3)
    );
    house.append(&[day(1, 3)]).await;
    let second = house.run().run().await.unwrap();
    assert_eq!(second.dates, ["2026-11-21"]);
    for v in &second.views {
        assert_eq!(
            (v.mode, v.dates, v.rows_read),
            (Mode::Incremental, 1, 2),
            "{}",
            v.name
        );
    }
    let dates: HashSet<_> = house.views().await[2]
        .iter()
        .map(|r| r.last().cloned())
        .collect();
    assert_eq!(dates.len(), 3);
    let history = History::new(&house.lake).unwrap();
    let listed = history.list(10).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].id, second.id);
    assert_eq!(listed[0].status, RunStatus::Succeeded);
}

#[tokio::test]
async fn new_views_are_backfilled_changed_ones_recomputed_removed_ones_left_alone() {
    let mut house = Lakehouse::new().await;
    let events: Vec<Event> = (0..40)
        .map(|i| Event {
            id: i,
            time_us: BASE_US + i as i64 * 3_000_000_000,
            kind: i % 3,
            user: i % 7,
            country: i % 3,
            product: Some(i % 2),
            amount: Some(i as u32),
            quantity: Some(1),
        })
        .collect();
    house.append(&events).await;
    let mut config = (*house.config).clone();
    let all_views = config.views.clone();
    config.views.truncate(2);
    house.config = Arc::new(config.clone());
    house.run().run().await.unwrap();

    config.views = all_views;
    config.views[0].filter = Some("type = 'purchase' AND amount >= 5".into());
    config.views.remove(1);
    config.check().unwrap();
    house.config = Arc::new(config.clone());
    let record = house.run().run().await.unwrap();
    let modes: Vec<(&str, Mode)> = record
        .views
        .iter()
        .map(|v| (v.name.as_str(), v.mode))
        .collect();
    assert_eq!(
        modes,
        [
            ("sales_by_country", Mode::Full),
            ("products_by_day", Mode::Full)
        ]
    );
    let sales = read_view(&house.lake, &config, &config.views[0]).await;
    let orders: i64 = sales
        .iter()
        .map(|r| i64::try_from(r[2].clone()).unwrap())
        .sum();
    let expected = events
        .iter()
        .filter(|e| e.kind == 0 && e.amount.unwrap() >= 20)
        .count();
    assert_eq!(
        orders as usize, expected,
        "the changed filter applies to every date"
    );
    let demo = Config::shop();
    let left_alone = read_view(&house.lake, &demo, &demo.views[1]).await;
    assert_eq!(
        left_alone,
        direct(&demo, &demo.views[1], &events),
        "a view removed from the config keeps its table"
    );
}

/// The dates (last column, days since the epoch) of a view's rows.
fn view_dates(rows: &[Vec<ScalarValue>]) -> BTreeSet<i32> {
    rows.iter()
        .map(|r| match r.last() {
            Some(ScalarValue::Date32(Some(days))) => *days,
            other => panic!("not a date: {other:?}"),
        })
        .collect()
}

/// An order (event `id`) at 01:00 on day `day` since the epoch.
fn order_on(day: i64, id: usize) -> Event {
    Event {
        id,
        time_us: day * MICROS_PER_DAY + 3_600_000_000,
        kind: 0,
        user: id,
        country: id % 3,
        product: Some(1),
        amount: Some(4),
        quantity: Some(1),
    }
}

#[tokio::test]
async fn retention_deletes_exactly_the_expired_dates_and_no_answer_changes() {
    let mut house = Lakehouse::new().await;
    let today = now_micros().div_euclid(MICROS_PER_DAY);
    let on = |days_ago: i64, id: usize| order_on(today - days_ago, id);
    let days_ago = |d: i64| (today - d) as i32;
    house
        .append(&[on(10, 0), on(10, 1), on(5, 2), on(1, 3), on(0, 4)])
        .await;
    house.run().run().await.unwrap();
    let before = house.views().await;
    let raw_dates = |house: &Lakehouse| {
        let url = house.lake.raw(&house.config.source().name);
        async move {
            let raw = lambdaflow_batch::lake::open(&url, None)
                .await
                .unwrap()
                .unwrap();
            partition_dates(&raw, EVENT_DATE).unwrap()
        }
    };
    assert_eq!(raw_dates(&house).await.len(), 4);

    let mut config = (*house.config).clone();
    config.retention.raw = Retention::For(Duration::from_secs(7 * 86_400));
    house.config = Arc::new(config.clone());
    let dry = Expire::new(&config, &house.lake)
        .with_dry_run(true)
        .run()
        .await
        .unwrap();
    assert_eq!(dry.len(), 1, "only raw has a retention: {dry:?}");
    assert_eq!(dry[0].dates, [format_date(days_ago(10))]);
    assert_eq!(
        raw_dates(&house).await.len(),
        4,
        "a dry run deletes nothing"
    );

    let expiring = house.run().run().await.unwrap();
    assert_eq!(expiring.status, RunStatus::Succeeded);
    assert_eq!(expiring.expired.len(), 1);
    assert_eq!(expiring.expired[0].table, "raw/events");
    assert_eq!(expiring.expired[0].dates, [format_date(days_ago(10))]);
    assert!(expiring.expired[0].files >= 1);
    assert_eq!(
        raw_dates(&house).await,
        [5, 1, 0].map(days_ago).into_iter().collect()
    );
    assert_eq!(house.views().await, before, "raw aging out changes no view");

    // A late event recomputes its own date only; the expired date stays as computed.
    house.append(&[on(1, 5)]).await;
    let late = house.run().run().await.unwrap();
    assert_eq!(late.dates, [format_date(days_ago(1))]);
    let after_late = house.views().await;
    for (view, rows) in after_late.iter().enumerate() {
        assert!(view_dates(rows).contains(&days_ago(10)), "view {view}");
    }
    let full = house.run().with_full(true).run().await.unwrap();
    for v in &full.views {
        assert_eq!((v.mode, v.kept_dates), (Mode::Full, 1), "{}", v.name);
    }
    assert_eq!(
        house.views().await,
        after_late,
        "--full keeps expired dates"
    );

    // A view's own retention deletes its dates, and late raw rows never bring them back.
    config.views[0].retention = Retention::For(Duration::from_secs(3 * 86_400));
    house.config = Arc::new(config.clone());
    let trimmed = house.run().run().await.unwrap();
    let view_table = format!("views/{}", config.views[0].name);
    let view_expiry = trimmed
        .expired
        .iter()
        .find(|e| e.table == view_table)
        .unwrap();
    assert_eq!(view_expiry.dates, [10, 5].map(|d| format_date(days_ago(d))));
    house.append(&[on(5, 6)]).await;
    house.run().run().await.unwrap();
    house.run().with_full(true).run().await.unwrap();
    let now = house.views().await;
    assert_eq!(
        view_dates(&now[0]),
        [1, 0].map(days_ago).into_iter().collect(),
        "the view keeps only its retention's dates"
    );
    for (view, rows) in now.iter().enumerate().skip(1) {
        assert_eq!(
            view_dates(rows),
            view_dates(&after_late[view]),
            "view {view} keeps every date"
        );
    }
}

/// The data files under a table's directory `dir`, recursively (not the log's checkpoints).
fn parquet_files(dir: &std::path::Path) -> BTreeSet<std::path::PathBuf> {
    let mut files = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.ends_with("_delta_log") {
            continue;
        }
        if path.is_dir() {
            files.extend(parquet_files(&path));
        } else if path.extension().is_some_and(|e| e == "parquet") {
            files.insert(path);
        }
    }
    files
}

#[tokio::test]
async fn vacuum_keeps_what_pinned_readers_need_and_collects_the_rest() {
    let mut house = Lakehouse::new().await;
    let mut config = (*house.config).clone();
    config.lake.checkpoint_interval = 2;
    house.config = Arc::new(config.clone());
    let today = now_micros().div_euclid(MICROS_PER_DAY);
    let on = |days_ago: i64, id: usize| order_on(today - days_ago, id);
    let old = (today - 10) as i32;
    house
        .append(&[on(10, 0), on(10, 1), on(5, 2), on(1, 3)])
        .await;
    let first = house.run().run().await.unwrap();
    assert_eq!(first.vacuum_error, None);
    let pinned = first.raw_version.unwrap();
    let answers = house.views().await;
    let raw_url = house.lake.raw(&config.source().name);
    let raw_dir = raw_url.to_file_path().unwrap();
    let view_dir = house
        .lake
        .view(&config.views[0].name)
        .to_file_path()
        .unwrap();

    // Retention removes the old date from raw's latest version; the views' watermark still
    // pins the version that holds it.
    config.retention.raw = Retention::For(Duration::from_secs(7 * 86_400));
    Expire::new(&config, &house.lake).run().await.unwrap();
    let old_files = parquet_files(&raw_dir.join(format!("event_date={}", format_date(old))));
    assert!(!old_files.is_empty());

    // A run killed between writing a file and committing it left this one behind.
    let live = parquet_files(&view_dir).into_iter().next().unwrap();
    let orphan = live.with_file_name("part-00000-killed-before-commit.parquet");
    std::fs::copy(&live, &orphan).unwrap();

    let later = |hours: i64| chrono::Utc::now() + chrono::Duration::hours(hours);
    let report = |vacuumed: &[Vacuumed], table: &str| {
        vacuumed.iter().find(|v| v.table == table).cloned().unwrap()
    };
    let view_table = format!("views/{}", config.views[0].name);

    let soon = Vacuum::new(&config, &house.lake)
        .with_now(later(1))
        .run()
        .await
        .unwrap();
    assert_eq!(
        report(&soon, &view_table).files,
        0,
        "younger than vacuum_retention"
    );
    assert!(orphan.exists());

    let dry = Vacuum::new(&config, &house.lake)
        .with_now(later(8 * 24))
        .with_dry_run(true)
        .run()
        .await
        .unwrap();
    assert_eq!(report(&dry, &view_table).files, 1, "{dry:?}");
    assert!(orphan.exists(), "a dry run deletes nothing");

    let week = Vacuum::new(&config, &house.lake)
        .with_now(later(8 * 24))
        .run()
        .await
        .unwrap();
    let raw = report(&week, "raw/events");
    assert_eq!(raw.pinned, [pinned]);
    assert_eq!(raw.files, 0, "the pinned version's files stay: {raw:?}");
    assert_eq!(
        raw.log_files, 1,
        "the entry before the checkpoint at the pinned version goes: {raw:?}"
    );
    assert!(
        !raw_dir
            .join("_delta_log/00000000000000000000.json")
            .exists()
    );
    assert!(!orphan.exists(), "the killed run's file is collected");
    assert!(old_files.iter().all(|f| f.exists()));
    let at_pin = lambdaflow_batch::lake::open(&raw_url, Some(pinned))
        .await
        .unwrap()
        .unwrap();
    let ids = lambdaflow_batch::lake::stored_ids(&at_pin, &config.source().id_field, old, |_| {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await
    .unwrap();
    assert_eq!(ids, 2, "the pinned raw version still reads");
    assert_eq!(house.views().await, answers);

    // Once a batch run moves the watermark, the expired date's files go.
    house.config = Arc::new(config.clone());
    let second = house.run().run().await.unwrap();
    assert_eq!(second.status, RunStatus::Succeeded);
    assert!(second.vacuum_error.is_none());
    let collected = Vacuum::new(&config, &house.lake)
        .with_now(later(8 * 24))
        .run()
        .await
        .unwrap();
    let raw = report(&collected, "raw/events");
    assert_eq!(raw.pinned, [second.raw_version.unwrap()]);
    assert_eq!(raw.files, old_files.len() as u64, "{raw:?}");
    assert!(old_files.iter().all(|f| !f.exists()));
    assert_eq!(house.views().await, answers, "no answer changes");

    // Every view still finds what it covers after its log was cleaned: nothing to recompute.
    let third = house.run().run().await.unwrap();
    for view in &third.views {
        assert_ne!(view.mode, Mode::Full, "{}", view.name);
        assert_eq!(view.dates, 0, "{}", view.name);
    }

    let tables = status(&config, &house.lake).await.unwrap();
    let raw = tables.iter().find(|t| t.table == "raw/events").unwrap();
    assert_eq!(raw.oldest_date, Some(format_date(old + 5)));
    assert_eq!(raw.newest_date, Some(format_date((today - 1) as i32)));
    assert!(
        raw.live_files >= 2 && raw.storage_bytes > raw.live_bytes,
        "{raw:?}"
    );
    assert!(
        raw.last_vacuum.is_some() && raw.next_expiry.is_some(),
        "{raw:?}"
    );
    let quarantine = tables
        .iter()
        .find(|t| t.table == "quarantine/events")
        .unwrap();
    assert_eq!(quarantine.next_expiry, None, "kept forever");
}

#[tokio::test]
async fn past_versions_answer_as_they_were_until_vacuumed() {
    let mut house = Lakehouse::new().await;
    let config = house.config.clone();
    let (source, view) = (config.source(), &config.views[0]);
    let reader = LakeReader::from_lake(house.lake.clone());
    let definition = fingerprint(source, view);
    let as_of = |at| {
        let reader = reader.clone();
        let definition = definition.clone();
        async move { reader.view_as_of(source, view, &definition, at).await }
    };
    let rows = |batch: &BatchView| {
        answer(
            source,
            view,
            &[&batch.state],
            &Query::whole(view),
            &AnswerLimits::NONE,
        )
        .unwrap()
    };
    let unpublished = as_of(AsOf::Version(0)).await.unwrap_err();
    assert!(
        matches!(unpublished, TravelError::NoVersions { .. }),
        "{unpublished}"
    );

    let today = now_micros().div_euclid(MICROS_PER_DAY);
    let before_any = now_micros();
    house
        .append(&[order_on(today - 1, 0), order_on(today, 1)])
        .await;
    house.run().run().await.unwrap();
    let first = reader.view(source, view).await.unwrap();
    let between = now_micros();
    tokio::time::sleep(Duration::from_millis(5)).await;
    house
        .append(&[order_on(today - 1, 2), order_on(today, 3)])
        .await;
    house.run().run().await.unwrap();
    let second = reader.view(source, view).await.unwrap();
    assert_ne!(rows(&first), rows(&second));
    let (v1, v2) = (first.version.unwrap(), second.version.unwrap());

    let created = as_of(AsOf::Version(0)).await.unwrap_err();
    assert!(
        matches!(created, TravelError::Unpublished { version: 0, .. }),
        "the table's creation holds no batch version: {created}"
    );
    let past = as_of(AsOf::Version(v1)).await.unwrap();
    assert_eq!(past.version, Some(v1));
    assert_eq!(past.watermark, first.watermark);
    assert_eq!(rows(&past), rows(&first), "the batch answer of then");
    let then = as_of(AsOf::Time(between)).await.unwrap();
    assert_eq!(then.version, Some(v1), "the last version committed by then");
    let now = as_of(AsOf::Time(now_micros())).await.unwrap();
    assert_eq!((now.version, rows(&now)), (Some(v2), rows(&second)));

    let refusal = |error: TravelError| error.to_string();
    let ahead = refusal(as_of(AsOf::Version(v2 + 1)).await.unwrap_err());
    assert!(ahead.contains(&format!("its latest is {v2}")), "{ahead}");
    let early = refusal(
        as_of(AsOf::Time(before_any - MICROS_PER_DAY))
            .await
            .unwrap_err(),
    );
    assert!(early.contains("had no batch version at"), "{early}");
    let redefined = reader
        .view_as_of(source, view, "another definition", AsOf::Version(v1))
        .await
        .unwrap_err();
    assert!(
        matches!(redefined, TravelError::OtherDefinition { version, .. } if version == v1),
        "{redefined}"
    );

    // The second run replaced the first one's files; once vacuum deletes them, the first
    // version is gone and the refusal names the oldest one that still reads.
    Vacuum::new(&config, &house.lake)
        .with_now(chrono::Utc::now() + chrono::Duration::days(8))
        .run()
        .await
        .unwrap();
    let gone = as_of(AsOf::Version(v1)).await.unwrap_err();
    let TravelError::Vacuumed {
        version: Some(asked),
        oldest,
        ..
    } = gone
    else {
        panic!("{gone}");
    };
    assert_eq!(asked, v1);
    assert!(oldest > v1 && oldest <= v2, "{oldest}");
    assert!(gone.to_string().contains("no longer held"), "{gone}");
    let oldest = as_of(AsOf::Version(oldest)).await.unwrap();
    assert_eq!(
        rows(&as_of(AsOf::Version(v2)).await.unwrap()),
        rows(&second)
    );
    assert!(oldest.version.is_some());
}

#[tokio::test]
async fn vacuum_never_runs_beside_a_batch_run() {
    let house = Lakehouse::new().await;
    let history = History::new(&house.lake).unwrap();
    let lock = BatchLock::new(history)
        .acquire("run-in-progress")
        .await
        .unwrap();
    let refused = Vacuum::new(&house.config, &house.lake).run_alone().await;
    assert!(refused.is_err(), "{refused:?}");
    lock.release().await.unwrap();
    Vacuum::new(&house.config, &house.lake)
        .run_alone()
        .await
        .unwrap();
}

/// A source whose raw table cannot be read fails alone: the run goes on with the next source,
/// whose views publish, and ends failed naming the source that did not.
#[tokio::test]
async fn a_failed_source_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::demo();
    config.lake.uri = dir.path().display().to_string();
    let lake = Lake::new(&config.lake).unwrap();
    let log = dir.path().join("raw/events/_delta_log");
    std::fs::create_dir_all(&log).unwrap();
    std::fs::write(log.join("00000000000000000000.json"), "not a delta log").unwrap();
    let history = History::new(&lake).unwrap();
    let error = BatchRun::new(Arc::new(config.clone()), lake.clone(), history.clone())
        .run()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("source events") && !error.contains("pageviews"),
        "{error}"
    );
    let record = history.list(1).await.unwrap().remove(0);
    assert_eq!(record.status, RunStatus::Failed);
    let outcome: BTreeMap<&str, (Option<u64>, bool)> = record
        .sources
        .iter()
        .map(|s| (s.name.as_str(), (s.raw_version, s.error.is_some())))
        .collect();
    assert!(outcome["events"].1, "{record:?}");
    assert_eq!(outcome["pageviews"], (Some(0), false), "{record:?}");
    let published: Vec<&str> = record
        .views
        .iter()
        .filter(|v| v.version.is_some())
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(published, ["pages_by_minute", "devices_by_hour"]);
}
