//! The typed configuration of the product contract (SPEC §2).
//!
//! One `serde` tree, loaded once in `main` and passed down. Text comes from a TOML file (or the
//! built-in demo config), then every `LAMBDAFLOW_<SECTION>__<KEY>` environment variable
//! overrides one key. Unknown keys are rejected with their name, so a typo never silently falls
//! back to a default.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schema::RESERVED_COLUMNS;
use crate::view::{ViewLayout, parse_filter};

/// The prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "LAMBDAFLOW_";

/// The whole configuration of one lambdaflow deployment.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where events come from.
    pub kafka: KafkaConfig,
    /// Where the master dataset, the quarantine and the views live.
    pub lake: LakeConfig,
    /// The HTTP API.
    #[serde(default)]
    pub serving: ServingConfig,
    /// The batch layer's schedule.
    #[serde(default)]
    pub batch: BatchConfig,
    /// How the archiver groups events into Delta commits.
    #[serde(default)]
    pub archive: ArchiveConfig,
    /// The shape of an event and how it is cleaned.
    pub source: SourceConfig,
    /// The declared aggregations.
    #[serde(default)]
    pub views: Vec<ViewDef>,
}

/// Kafka connection and topic.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, or `"embedded"` for an in-process Kafka-protocol broker.
    pub brokers: String,
    /// The topic every layer reads.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Partition count used when the topic has to be created.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Consumer group of the speed layer; the archiver uses `<group_id>-archiver`.
    #[serde(default = "default_group")]
    pub group_id: String,
}

impl KafkaConfig {
    /// Whether the in-process broker should be started.
    pub fn is_embedded(&self) -> bool {
        self.brokers == "embedded"
    }
}

/// The lake root.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LakeConfig {
    /// `file:///path`, a plain local path, or `s3://bucket/prefix`.
    pub uri: String,
}

/// The HTTP API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServingConfig {
    /// Socket address to listen on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Longest a `/v1/sql` query may run before it is cancelled.
    #[serde(default = "default_sql_timeout", with = "humantime_serde")]
    pub sql_timeout: Duration,
    /// Most rows a `/v1/sql` answer may hold; a larger answer is refused, not truncated.
    #[serde(default = "default_sql_max_rows")]
    pub sql_max_rows: usize,
    /// Memory a `/v1/sql` query may hold for sorts, joins and aggregations, in bytes.
    #[serde(default = "default_sql_max_memory")]
    pub sql_max_memory_bytes: usize,
}

impl Default for ServingConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body(),
            sql_timeout: default_sql_timeout(),
            sql_max_rows: default_sql_max_rows(),
            sql_max_memory_bytes: default_sql_max_memory(),
        }
    }
}

/// The batch layer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Cron expression with seconds, in UTC.
    #[serde(default = "default_schedule")]
    pub schedule: String,
}

impl BatchConfig {
    /// The parsed schedule; [`Config::check`] has made sure it parses.
    pub fn cron(&self) -> cron::Schedule {
        cron::Schedule::from_str(&self.schedule).expect("checked when the config was loaded")
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            schedule: default_schedule(),
        }
    }
}

/// How the archiver batches its Delta commits: one commit per table per chunk, a chunk closing
/// when it is `commit_interval` old or holds `commit_max_events` messages, whichever is first.
/// Larger chunks mean fewer, bigger Parquet files and a longer delay before the raw table shows
/// an event.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Longest time a message waits before its chunk is committed.
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Most messages in one chunk.
    #[serde(default = "default_commit_max_events")]
    pub commit_max_events: usize,
    /// How many event dates' id sets the deduplicator keeps in memory; older dates are
    /// reloaded from the raw table when a late event needs them.
    #[serde(default = "default_dedup_dates")]
    pub dedup_max_dates: usize,
    /// Auto-compaction: once this many files smaller than the compaction target have been
    /// committed to one date partition, the archiver rewrites them into one (an OPTIMIZE
    /// commit, `dataChange: false`). `0` turns it off.
    #[serde(default = "default_compact_min_files")]
    pub compact_min_files: usize,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            commit_interval: default_commit_interval(),
            commit_max_events: default_commit_max_events(),
            dedup_max_dates: default_dedup_dates(),
            compact_min_files: default_compact_min_files(),
        }
    }
}

/// The event source: identity, time and declared fields.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Names the raw and quarantine tables (`raw/<name>`).
    pub name: String,
    /// The string field that identifies an event; duplicates share it.
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// RFC 3339 string with offset, or integer epoch milliseconds.
    #[serde(default = "default_time_field")]
    pub time_field: String,
    /// Events further in the future than this are rejected with `time_in_future`.
    #[serde(default = "default_max_future", with = "humantime_serde")]
    pub max_future: Duration,
    /// Larger payloads are rejected with `too_large`.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Keep fields that are not declared, as a JSON object in the `_undeclared` column.
    #[serde(default)]
    pub keep_undeclared: bool,
    /// Declared fields, in column order.
    #[serde(default)]
    pub fields: Vec<FieldDef>,
}

impl SourceConfig {
    /// The declared field called `name`, if any.
    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// One declared field of an event.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    /// JSON key and column name.
    pub name: String,
    /// Declared type; values of another type are rejected with `wrong_type:<name>`.
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// Absent or null values are rejected with `missing_field:<name>`.
    #[serde(default)]
    pub required: bool,
    /// String normalisation applied before anything is stored.
    #[serde(default)]
    pub normalize: Option<Normalize>,
    /// Masking applied after normalisation; the clear value is never stored.
    #[serde(default)]
    pub mask: Option<Mask>,
}

/// The type of a declared field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// UTF-8 string.
    String,
    /// 64-bit signed integer.
    Int,
    /// 64-bit float; integers are accepted.
    Float,
    /// true or false.
    Bool,
    /// RFC 3339 string with offset or integer epoch milliseconds; stored as UTC milliseconds.
    Timestamp,
}

impl FieldType {
    /// Whether sums and averages of this type make sense.
    pub fn is_numeric(self) -> bool {
        matches!(self, Self::Int | Self::Float)
    }
}

/// String normalisations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    /// Strip leading and trailing white space.
    Trim,
    /// Trim, then lower-case.
    Lower,
    /// Trim, then upper-case.
    Upper,
}

/// Masking functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mask {
    /// Lowercase hex SHA-256 of the (normalised) value.
    Sha256,
}

/// One declared aggregation.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ViewDef {
    /// Names the view table (`views/<name>`) and the API resource.
    pub name: String,
    /// Bucket width.
    pub granularity: Granularity,
    /// Declared fields to group by.
    #[serde(default)]
    pub dimensions: Vec<String>,
    /// SQL boolean expression over declared fields; only matching events are aggregated.
    #[serde(default)]
    pub filter: Option<String>,
    /// The aggregates kept per bucket and dimension values.
    pub measures: Vec<MeasureDef>,
}

/// Bucket widths, finest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// 60 seconds.
    Minute,
    /// 3,600 seconds.
    Hour,
    /// One UTC day.
    Day,
}

impl Granularity {
    /// The config and API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    /// Width of a bucket in microseconds, the unit of every timestamp column.
    pub fn micros(self) -> i64 {
        match self {
            Self::Minute => 60_000_000,
            Self::Hour => 3_600_000_000,
            Self::Day => 86_400_000_000,
        }
    }

    /// The start of the bucket holding `us` (UTC epoch microseconds).
    pub fn truncate(self, us: i64) -> i64 {
        us - us.rem_euclid(self.micros())
    }
}

/// One measure of a view.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureDef {
    /// Column and API name.
    pub name: String,
    /// The aggregate function.
    pub agg: AggKind,
    /// The field aggregated; not used by `count`.
    #[serde(default)]
    pub field: Option<String>,
}

/// Aggregate functions; each is a monoid so batch and speed states merge exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AggKind {
    /// Number of events.
    Count,
    /// Sum of non-null values.
    Sum,
    /// Smallest non-null value.
    Min,
    /// Largest non-null value.
    Max,
    /// Sum / count of non-null values.
    Avg,
    /// HyperLogLog estimate of distinct non-null values.
    ApproxDistinct,
}

impl AggKind {
    /// The config and API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Sum => "sum",
            Self::Min => "min",
            Self::Max => "max",
            Self::Avg => "avg",
            Self::ApproxDistinct => "approx_distinct",
        }
    }
}

impl Config {
    /// Parses TOML text, applies `LAMBDAFLOW_*` overrides from `env`, and checks the result.
    ///
    /// `origin` names the text in error messages (a path or "built-in").
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let mut table: toml::Table = toml::from_str(text).map_err(|detail| Error::Parse {
            origin: origin.to_owned(),
            detail,
        })?;
        apply_env(&mut table, env)?;
        let config: Config = table.try_into().map_err(|detail| Error::Parse {
            origin: origin.to_owned(),
            detail,
        })?;
        config.check()?;
        Ok(config)
    }

    /// The built-in config of `lambdaflow demo`: a small shop.
    pub fn demo() -> Self {
        Self::from_toml(DEMO_CONFIG, "built-in demo config", std::iter::empty())
            .expect("the built-in demo config is valid")
    }

    /// Checks what serde cannot: names, references from views to fields, value ranges.
    pub fn check(&self) -> Result<()> {
        let invalid = |key: String, message: String| Err(Error::Invalid { key, message });
        if self.kafka.partitions < 1 {
            return invalid("kafka.partitions".into(), "must be at least 1".into());
        }
        if self.kafka.topic.is_empty() {
            return invalid("kafka.topic".into(), "must not be empty".into());
        }
        if self.archive.commit_max_events == 0 || self.archive.dedup_max_dates == 0 {
            return invalid(
                "archive".into(),
                "commit_max_events and dedup_max_dates must be positive".into(),
            );
        }
        check_name("source.name", &self.source.name)?;
        check_name("source.id_field", &self.source.id_field)?;
        check_name("source.time_field", &self.source.time_field)?;
        if self.source.id_field == self.source.time_field {
            return invalid(
                "source.time_field".into(),
                "must differ from id_field".into(),
            );
        }
        if self.source.max_event_bytes == 0 {
            return invalid("source.max_event_bytes".into(), "must be positive".into());
        }
        let mut seen: HashSet<&str> = [
            self.source.id_field.as_str(),
            self.source.time_field.as_str(),
        ]
        .into();
        for (i, f) in self.source.fields.iter().enumerate() {
            let key = format!("source.fields[{i}]");
            check_name(&key, &f.name)?;
            if !seen.insert(&f.name) {
                return invalid(
                    key,
                    format!(
                        "field `{}` is declared twice (or is the id or time field)",
                        f.name
                    ),
                );
            }
            if f.kind != FieldType::String && (f.normalize.is_some() || f.mask.is_some()) {
                return invalid(
                    key,
                    format!(
                        "field `{}`: normalize and mask apply to string fields only",
                        f.name
                    ),
                );
            }
        }
        for reserved in RESERVED_COLUMNS {
            if seen.contains(reserved) {
                return invalid(
                    "source".into(),
                    format!("`{reserved}` is a column lambdaflow adds itself; rename the field"),
                );
            }
        }
        if let Err(e) = cron::Schedule::from_str(&self.batch.schedule) {
            return invalid(
                "batch.schedule".into(),
                format!(
                    "`{}` is not a cron expression with seconds (e.g. \"0 0 2 * * *\"): {e}",
                    self.batch.schedule
                ),
            );
        }
        let mut view_names = HashSet::new();
        for view in &self.views {
            let key = format!("views.{}", view.name);
            check_name("views[].name", &view.name)?;
            if !view_names.insert(&view.name) {
                return invalid(key, "view declared twice".into());
            }
            for dim in &view.dimensions {
                if self.source.field(dim).is_none() {
                    return invalid(key, format!("dimension `{dim}` is not a declared field"));
                }
            }
            if view.measures.is_empty() {
                return invalid(key, "declare at least one measure".into());
            }
            let mut measure_names = HashSet::new();
            for m in &view.measures {
                let key = format!("{key}.measures.{}", m.name);
                check_name(&key, &m.name)?;
                if !measure_names.insert(&m.name) || view.dimensions.contains(&m.name) {
                    return invalid(key, "measure name used twice in the view".into());
                }
                check_measure(&self.source, m)
                    .map_err(|message| Error::Invalid { key, message })?;
            }
            ViewLayout::new(&self.source, view).map_err(|message| Error::Invalid {
                key: key.clone(),
                message,
            })?;
            if let Some(filter) = &view.filter {
                parse_filter(&self.source, filter).map_err(|message| Error::Invalid {
                    key: format!("{key}.filter"),
                    message,
                })?;
            }
        }
        Ok(())
    }
}

fn check_measure(source: &SourceConfig, m: &MeasureDef) -> std::result::Result<(), String> {
    let field = match (m.agg, &m.field) {
        (AggKind::Count, None) => return Ok(()),
        (AggKind::Count, Some(_)) => return Err("count takes no field".into()),
        (_, None) => return Err(format!("{} needs a field", m.agg.as_str())),
        (_, Some(name)) => name,
    };
    let Some(def) = source.field(field) else {
        return Err(format!("`{field}` is not a declared field"));
    };
    let ok = match m.agg {
        AggKind::Sum | AggKind::Avg => def.kind.is_numeric(),
        AggKind::Min | AggKind::Max => def.kind.is_numeric() || def.kind == FieldType::Timestamp,
        AggKind::ApproxDistinct | AggKind::Count => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "field `{field}` of type {:?} cannot be aggregated that way",
            def.kind
        )
        .to_lowercase())
    }
}

/// Names become column, table and path names: keep them to plain identifiers.
fn check_name(key: &str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            key: key.to_owned(),
            message: format!(
                "`{name}` must be a plain identifier: a letter or _, then letters, digits or _"
            ),
        })
    }
}

/// Applies `LAMBDAFLOW_<SECTION>__<KEY>=value` overrides. Variables without `__` after the
/// prefix (such as `LAMBDAFLOW_LOG`) are not config keys and are ignored.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<()> {
    for (var, value) in env {
        let Some(path) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !path.contains("__") {
            continue;
        }
        let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        let env_err = |message: String| Error::Env {
            var: var.clone(),
            message,
        };
        let (leaf, sections) = keys.split_last().expect("split yields at least one item");
        let mut node = &mut *table;
        for section in sections {
            node = node
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| env_err(format!("`{section}` is not a section")))?;
        }
        let typed = match node.get(leaf) {
            Some(toml::Value::String(_)) => toml::Value::String(value.clone()),
            _ => parse_scalar(&value),
        };
        node.insert(leaf.clone(), typed);
    }
    Ok(())
}

/// An override is read as a TOML value when it is one (`4`, `true`, `[1, 2]`), else as a string.
fn parse_scalar(value: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()))
}

fn default_topic() -> String {
    "events".into()
}
fn default_partitions() -> i32 {
    4
}
fn default_group() -> String {
    "lambdaflow".into()
}
fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_max_body() -> usize {
    16 * 1024 * 1024
}
fn default_sql_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_sql_max_rows() -> usize {
    100_000
}
fn default_sql_max_memory() -> usize {
    512 * 1024 * 1024
}
fn default_schedule() -> String {
    "0 0 2 * * *".into()
}
fn default_commit_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_commit_max_events() -> usize {
    100_000
}
fn default_dedup_dates() -> usize {
    32
}
fn default_compact_min_files() -> usize {
    50
}
fn default_id_field() -> String {
    "event_id".into()
}
fn default_time_field() -> String {
    "event_time".into()
}
fn default_max_future() -> Duration {
    Duration::from_secs(86_400)
}
fn default_max_event_bytes() -> usize {
    1024 * 1024
}

/// Durations are written the human way in the config (`"2s"`, `"1d"`).
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration like \"2s\" or \"1d\": {e}"
            ))
        })
    }
}

/// The built-in demo config: a small shop with views over purchases and page views.
pub const DEMO_CONFIG: &str = include_str!("demo.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn demo_config_is_valid_and_has_views() {
        let c = Config::demo();
        assert!(c.kafka.is_embedded());
        assert!(c.views.len() >= 3);
    }

    #[test]
    fn env_overrides_keys_with_types() {
        let c = Config::from_toml(
            DEMO_CONFIG,
            "t",
            env(&[
                ("LAMBDAFLOW_KAFKA__BROKERS", "localhost:9092"),
                ("LAMBDAFLOW_KAFKA__PARTITIONS", "7"),
                ("LAMBDAFLOW_ARCHIVE__COMMIT_INTERVAL", "250ms"),
                ("LAMBDAFLOW_LOG", "debug"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "localhost:9092");
        assert_eq!(c.kafka.partitions, 7);
        assert_eq!(c.archive.commit_interval, Duration::from_millis(250));
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let text = DEMO_CONFIG.replace("[kafka]", "[kafka]\nbrokerz = \"x\"");
        let err = Config::from_toml(&text, "t", []).unwrap_err().to_string();
        assert!(err.contains("brokerz"), "{err}");
        let err = Config::from_toml(DEMO_CONFIG, "t", env(&[("LAMBDAFLOW_KAFKA__TOPICS", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("topics"), "{err}");
    }

    #[test]
    fn views_may_only_reference_declared_fields() {
        let text =
            DEMO_CONFIG.replacen("dimensions = [\"country\"]", "dimensions = [\"planet\"]", 1);
        let err = Config::from_toml(&text, "t", []).unwrap_err().to_string();
        assert!(err.contains("planet"), "{err}");
    }

    #[test]
    fn sum_of_a_string_field_is_rejected() {
        let text = DEMO_CONFIG.replacen(
            "agg = \"sum\", field = \"amount\"",
            "agg = \"sum\", field = \"country\"",
            1,
        );
        let err = Config::from_toml(&text, "t", []).unwrap_err().to_string();
        assert!(err.contains("country"), "{err}");
    }

    #[test]
    fn reserved_and_odd_names_are_rejected() {
        let text = DEMO_CONFIG.replacen("name = \"country\"", "name = \"event_date\"", 1);
        assert!(Config::from_toml(&text, "t", []).is_err());
        let text = DEMO_CONFIG.replacen("name = \"country\"", "name = \"coun try\"", 1);
        assert!(Config::from_toml(&text, "t", []).is_err());
    }

    #[test]
    fn granularity_truncates_in_utc_including_before_epoch() {
        assert_eq!(Granularity::Hour.truncate(3_600_000_000 + 5), 3_600_000_000);
        assert_eq!(Granularity::Day.truncate(-1), -86_400_000_000);
        assert_eq!(Granularity::Minute.truncate(59_999_999), 0);
    }
}
