//! The typed configuration of one deployment: where events come from, where the lake
//! is, how the API, the batch layer and the archiver run — and, by reference to their own
//! modules, the event sources ([`crate::source`]) and the declared views ([`crate::view`]).
//!
//! One `serde` tree, loaded once in `main` and passed down. Text comes from a TOML file (or the
//! built-in demo config), then every `LAMBDAFLOW_<SECTION>__<KEY>` environment variable
//! overrides one key. Unknown keys are rejected with their name, so a typo never silently falls
//! back to a default.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::error::{Error, Result};
use crate::humantime_serde;
use crate::layout::{ViewLayout, parse_filter};
use crate::retention::RetentionConfig;
use crate::schema::RESERVED_COLUMNS;
use crate::source::{SourceConfig, check_name};
use crate::view::ViewDef;

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
    /// How long the raw and quarantine tables keep their dates.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// The single-source form, `[source]`, whose topic is `kafka.topic` unless it names its own;
    /// loading moves it into `sources`.
    #[serde(default, skip_serializing)]
    source: Option<SourceConfig>,
    /// Every source of the deployment, each with its topic, the shape of its events and how
    /// they are cleaned: `[[sources]]`, or the one `[source]`.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// The declared aggregations.
    #[serde(default)]
    pub views: Vec<ViewDef>,
}

/// Kafka connection and topic.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, or `"embedded"` for an in-process Kafka-protocol broker.
    pub brokers: String,
    /// The topic of the single `[source]` form when it names none; each of `[[sources]]`
    /// names its own. Every layer reads a source's `topic`, never this.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Partition count used when the topic has to be created.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Consumer group of the speed layer; the archiver uses `<group_id>-archiver`.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Replicas of each partition when a topic has to be created.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i16,
    /// librdkafka properties given to every client (consumers, producers, admin), such as
    /// `security.protocol`, `sasl.mechanisms`, `sasl.username`, `ssl.ca.location`. A value may
    /// name environment variables as `${NAME}`, read when the config loads, so that secrets stay
    /// out of the file. Never serialised: values may be secrets.
    #[serde(default, skip_serializing)]
    pub properties: BTreeMap<String, String>,
}

/// librdkafka properties lambdaflow sets itself, each for a guarantee it gives: where the
/// brokers are, the consumer groups, offsets that live in the lake and never in Kafka, the
/// start of a partition whose offsets are gone, the idempotent producer.
pub const RESERVED_KAFKA_PROPERTIES: [&str; 10] = [
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "transactional.id",
];

/// Property values may hold secrets: only their keys are shown.
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .field("group_id", &self.group_id)
            .field("replication_factor", &self.replication_factor)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
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
    /// How long a file no longer referenced by a table's latest version (or by a version a
    /// reader still pins) stays on storage before vacuum deletes it; log entries older than
    /// this are cleaned up too.
    #[serde(default = "default_vacuum_retention", with = "humantime_serde")]
    pub vacuum_retention: Duration,
    /// Commits between two checkpoints of a table's log.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: u64,
}

impl LakeConfig {
    /// The lake at `uri` with the default lifecycle settings.
    pub fn at(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            vacuum_retention: default_vacuum_retention(),
            checkpoint_interval: default_checkpoint_interval(),
        }
    }
}

/// The shortest `lake.vacuum_retention`: an archiver writes a file a little before it commits
/// it, and a query reads files a while after it listed them; vacuum must not delete either.
pub const MIN_VACUUM_RETENTION: Duration = Duration::from_secs(10 * 60);

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
    /// Where the speed layer writes the first occurrences it keeps until a batch version
    /// covers them and the older ids its deduplication remembers, both in unnamed files that
    /// go with the process however it ends; the system's temporary directory when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_dir: Option<std::path::PathBuf>,
    /// Most `/v1/sql` queries running at once; more get 429 with `Retry-After`.
    #[serde(default = "default_sql_max_concurrent")]
    pub sql_max_concurrent: usize,
    /// Most view queries answered at once; the others wait their turn within
    /// `query_timeout`. Absent, one fewer than the machine's cores (at least one), so that
    /// answers never take the core the speed layer folds on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_max_concurrent: Option<usize>,
    /// Most bytes of JSON a `/v1/sql` answer may hold; a larger answer is refused.
    #[serde(default = "default_sql_max_answer_bytes")]
    pub sql_max_answer_bytes: usize,
    /// Longest a view query may run before it is refused.
    #[serde(default = "default_query_timeout", with = "humantime_serde")]
    pub query_timeout: Duration,
    /// Most groups a view query may build before it is refused (400 `too_many_groups`).
    #[serde(default = "default_query_max_groups")]
    pub query_max_groups: usize,
    /// The `limit` of a view query that gives none.
    #[serde(default = "default_query_limit")]
    pub query_default_limit: usize,
    /// Tokens and scopes.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Whether `/metrics` answers without a token when `auth.mode = "tokens"`.
    #[serde(default)]
    pub metrics_public: bool,
    /// Lets `run` and `serve` listen on a non-loopback address with `auth.mode = "none"`.
    #[serde(default)]
    pub allow_public_without_auth: bool,
    /// Origins (`https://host:port`) besides the API's own whose pages may write through it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// PEM certificate chain: with `tls_key`, the API speaks HTTPS only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Where the same read-only SQL is served over the Postgres wire protocol
    /// (`"127.0.0.1:5433"`); not served when absent. With auth on, the password is a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_listen: Option<String>,
}

impl Default for ServingConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body(),
            sql_timeout: default_sql_timeout(),
            sql_max_rows: default_sql_max_rows(),
            sql_max_memory_bytes: default_sql_max_memory(),
            speed_dir: None,
            sql_max_concurrent: default_sql_max_concurrent(),
            query_max_concurrent: None,
            sql_max_answer_bytes: default_sql_max_answer_bytes(),
            query_timeout: default_query_timeout(),
            query_max_groups: default_query_max_groups(),
            query_default_limit: default_query_limit(),
            auth: AuthConfig::default(),
            metrics_public: false,
            allow_public_without_auth: false,
            allowed_origins: Vec::new(),
            tls_cert: None,
            tls_key: None,
            pg_listen: None,
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
    /// Views recomputed and published at once within a source.
    #[serde(default = "default_parallelism")]
    pub parallelism: usize,
    /// Retries of a task whose error is transient (the store, a lost commit race).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Where the view plans run: `"local"` (in this process) or `"ballista://host:port"`, the
    /// scheduler of an Apache DataFusion Ballista cluster (`lambdaflow cluster scheduler`).
    #[serde(default = "default_engine")]
    pub engine: String,
}

impl BatchConfig {
    /// The parsed schedule; [`Config::check`] has made sure it parses.
    pub fn cron(&self) -> cron::Schedule {
        cron::Schedule::from_str(&self.schedule).expect("checked when the config was loaded")
    }

    /// The Ballista scheduler's `host:port` when the engine is a cluster, `None` when local;
    /// [`Config::check`] has made sure the engine parses.
    pub fn scheduler(&self) -> Option<String> {
        parse_engine(&self.engine).expect("checked when the config was loaded")
    }
}

/// `"local"` → `None`; `"ballista://host:port"` → `Some("host:port")`.
fn parse_engine(engine: &str) -> std::result::Result<Option<String>, String> {
    if engine == "local" {
        return Ok(None);
    }
    let url = url::Url::parse(engine).map_err(|e| e.to_string())?;
    match (url.scheme(), url.host_str(), url.port()) {
        ("ballista", Some(host), Some(port)) if url.path().is_empty() || url.path() == "/" => {
            Ok(Some(format!("{host}:{port}")))
        }
        _ => Err("not of the form ballista://host:port".into()),
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            schedule: default_schedule(),
            parallelism: default_parallelism(),
            retries: default_retries(),
            engine: default_engine(),
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
    /// How many event dates' ids the deduplicator keeps; older dates are reloaded from the
    /// raw table when a late event needs them.
    #[serde(default = "default_dedup_dates")]
    pub dedup_max_dates: usize,
    /// Where the archiver's deduplication keeps the older ids of each date, as sorted runs
    /// in unnamed files (gone when the process stops; about 16 bytes an id on disk and 1.3 in
    /// memory); the system's temporary directory when absent. A disk, not a memory-backed
    /// file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_dir: Option<std::path::PathBuf>,
    /// Auto-compaction: once this many files have been appended to one date partition since
    /// its last compaction, the archiver merges them, with older files of a similar size by
    /// tiers of this many (an OPTIMIZE commit, `dataChange: false`). `0` turns it off.
    #[serde(default = "default_compact_min_files")]
    pub compact_min_files: usize,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            commit_interval: default_commit_interval(),
            commit_max_events: default_commit_max_events(),
            dedup_max_dates: default_dedup_dates(),
            dedup_dir: None,
            compact_min_files: default_compact_min_files(),
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
        let env: Vec<(String, String)> = env.into_iter().collect();
        apply_env(&mut table, env.iter().cloned())?;
        let mut config: Config = table.try_into().map_err(|detail| Error::Parse {
            origin: origin.to_owned(),
            detail,
        })?;
        config.expand_kafka_properties(&env)?;
        config.gather_sources()?;
        config.check()?;
        Ok(config)
    }

    /// The built-in config of `lambdaflow demo`: a small shop and its web tracker.
    pub fn demo() -> Self {
        Self::from_toml(DEMO_CONFIG, "built-in demo config", std::iter::empty())
            .expect("the built-in demo config is valid")
    }

    /// The demo's shop alone: its `events` source and the views over it, a deployment of one
    /// source, which tests and benchmarks of one source start from.
    pub fn shop() -> Self {
        let demo = Self::demo();
        demo.scoped(demo.source_named("events").expect("the demo has a shop"))
    }

    /// The source of a config with one: a single-source deployment, or a deployment
    /// [`scoped`](Self::scoped) to one of its sources, which is what an archiver, a speed layer
    /// and a batch run of a source read. Deployment-wide code asks for a view's source with
    /// [`source_of`](Self::source_of) or a source by name. Panics on a config of several
    /// sources: a layer handed a whole deployment would otherwise read its first source only.
    pub fn source(&self) -> &SourceConfig {
        assert_eq!(
            self.sources.len(),
            1,
            "a config of several sources has no one source"
        );
        &self.sources[0]
    }

    /// The source called `name`, or the only one when `name` is `None`; why not otherwise (an
    /// unknown name, or none given where there are several). The collector, the quarantine
    /// listing and `gen` take a source this way.
    pub fn pick_source(&self, name: Option<&str>) -> std::result::Result<&SourceConfig, String> {
        match name {
            Some(name) => self.source_named(name),
            None if self.sources.len() == 1 => Ok(&self.sources[0]),
            None => {
                let names: Vec<String> = self
                    .sources
                    .iter()
                    .map(|s| format!("`{}`", s.name))
                    .collect();
                Err(format!(
                    "the deployment has several sources: name one of {}",
                    names.join(", ")
                ))
            }
        }
    }

    /// The source called `name`, or why there is none: the message names the sources there
    /// are. Views and the collector refer to sources by name.
    pub fn source_named(&self, name: &str) -> std::result::Result<&SourceConfig, String> {
        self.sources.iter().find(|s| s.name == name).ok_or_else(|| {
            let names: Vec<String> = self
                .sources
                .iter()
                .map(|s| format!("`{}`", s.name))
                .collect();
            format!(
                "no source is called `{name}`; the deployment's sources are {}",
                names.join(", ")
            )
        })
    }

    /// The source `view` reads: the one it names, or the deployment's only one.
    pub fn source_of(&self, view: &ViewDef) -> &SourceConfig {
        match &view.source {
            Some(name) => self
                .source_named(name)
                .expect("checked when the config was loaded"),
            None => &self.sources[0],
        }
    }

    /// The views over the source called `source`, in declaration order.
    pub fn views_of<'a>(&'a self, source: &'a str) -> impl Iterator<Item = &'a ViewDef> {
        self.views
            .iter()
            .filter(move |v| self.source_of(v).name == source)
    }

    /// This deployment narrowed to one of its sources and the views over it, every other
    /// setting kept: what the archiver, the speed layer and a batch run of that source read.
    pub fn scoped(&self, source: &SourceConfig) -> Config {
        Config {
            sources: vec![source.clone()],
            views: self.views_of(&source.name).cloned().collect(),
            ..self.clone()
        }
    }

    /// Replaces each `${NAME}` in a `[kafka.properties]` value with that variable of `env`.
    fn expand_kafka_properties(&mut self, env: &[(String, String)]) -> Result<()> {
        for (key, value) in &mut self.kafka.properties {
            let invalid = |message: String| Error::Invalid {
                key: format!("kafka.properties.{key}"),
                message,
            };
            let mut expanded = String::with_capacity(value.len());
            let mut rest = value.as_str();
            while let Some(start) = rest.find("${") {
                expanded.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let end = after
                    .find('}')
                    .ok_or_else(|| invalid("`${` without its closing `}`".into()))?;
                let name = &after[..end];
                let found = env
                    .iter()
                    .find(|(var, _)| var == name)
                    .ok_or_else(|| invalid(format!("environment variable `{name}` is not set")))?;
                expanded.push_str(&found.1);
                rest = &after[end + 1..];
            }
            expanded.push_str(rest);
            *value = expanded;
        }
        Ok(())
    }

    /// Moves the single-source form into `sources`, with `kafka.topic` as its topic when it
    /// names none.
    fn gather_sources(&mut self) -> Result<()> {
        let Some(mut single) = self.source.take() else {
            return Ok(());
        };
        if !self.sources.is_empty() {
            return Err(Error::Invalid {
                key: "source".into(),
                message: "declare one `[source]` or several `[[sources]]`, not both".into(),
            });
        }
        if single.topic.is_empty() {
            single.topic = self.kafka.topic.clone();
        }
        self.sources.push(single);
        Ok(())
    }

    /// Checks what serde cannot: names, references from views to fields, value ranges. The
    /// source and each view check themselves; here they are put together with the schema's
    /// reserved columns and the compiled view layouts and filters.
    pub fn check(&self) -> Result<()> {
        let invalid = |key: String, message: String| Err(Error::Invalid { key, message });
        if self.kafka.partitions < 1 {
            return invalid("kafka.partitions".into(), "must be at least 1".into());
        }
        if self.kafka.replication_factor < 1 {
            return invalid(
                "kafka.replication_factor".into(),
                "must be at least 1".into(),
            );
        }
        if let Some(key) = self
            .kafka
            .properties
            .keys()
            .find(|k| RESERVED_KAFKA_PROPERTIES.contains(&k.as_str()))
        {
            return invalid(
                format!("kafka.properties.{key}"),
                "lambdaflow sets this property itself (brokers come from kafka.brokers, groups from kafka.group_id; offsets live in the lake and the producer is idempotent)".into(),
            );
        }
        if self.archive.commit_max_events == 0 || self.archive.dedup_max_dates == 0 {
            return invalid(
                "archive".into(),
                "commit_max_events and dedup_max_dates must be positive".into(),
            );
        }
        if self.lake.vacuum_retention < MIN_VACUUM_RETENTION {
            return invalid(
                "lake.vacuum_retention".into(),
                format!(
                    "must be at least {}",
                    humantime::format_duration(MIN_VACUUM_RETENTION)
                ),
            );
        }
        if self.lake.checkpoint_interval == 0 {
            return invalid(
                "lake.checkpoint_interval".into(),
                "must be at least 1".into(),
            );
        }
        self.check_serving()?;
        self.check_sources()?;
        if let Err(e) = cron::Schedule::from_str(&self.batch.schedule) {
            return invalid(
                "batch.schedule".into(),
                format!(
                    "`{}` is not a cron expression with seconds (e.g. \"0 0 2 * * *\"): {e}",
                    self.batch.schedule
                ),
            );
        }
        if !(1..=64).contains(&self.batch.parallelism) {
            return invalid(
                "batch.parallelism".into(),
                format!("must be between 1 and 64, got {}", self.batch.parallelism),
            );
        }
        if let Err(e) = parse_engine(&self.batch.engine) {
            return invalid(
                "batch.engine".into(),
                format!(
                    "`{}` is neither \"local\" nor \"ballista://host:port\": {e}",
                    self.batch.engine
                ),
            );
        }
        if self.batch.retries > 10 {
            return invalid(
                "batch.retries".into(),
                format!("must be at most 10, got {}", self.batch.retries),
            );
        }
        let mut view_names = HashSet::new();
        for view in &self.views {
            let key = format!("views.{}", view.name);
            check_name("views[].name", &view.name)?;
            if !view_names.insert(&view.name) {
                return invalid(key, "view declared twice".into());
            }
            let source = self.pick_source(view.source.as_deref());
            let source = source.map_err(|message| Error::Invalid {
                key: format!("{key}.source"),
                message,
            })?;
            view.check(source)?;
            ViewLayout::new(source, view).map_err(|detail| Error::Layout {
                key: key.clone(),
                detail,
            })?;
            if let Some(filter) = &view.filter {
                parse_filter(source, filter).map_err(|detail| Error::Filter {
                    key: format!("{key}.filter"),
                    detail,
                })?;
            }
        }
        Ok(())
    }
}

impl Config {
    /// Each source checks itself; here: at least one, names and topics apart, no field named
    /// like a column lambdaflow adds.
    fn check_sources(&self) -> Result<()> {
        let invalid = |key: String, message: String| Err(Error::Invalid { key, message });
        if self.sources.is_empty() {
            return invalid(
                "sources".into(),
                "declare a `[source]` or at least one `[[sources]]`".into(),
            );
        }
        let (mut names, mut topics) = (HashSet::new(), HashSet::new());
        for source in &self.sources {
            source.check()?;
            let key = format!("sources.{}", source.name);
            if !names.insert(&source.name) {
                return invalid(key, "source declared twice".into());
            }
            if source.topic.is_empty() {
                return invalid(
                    format!("{key}.topic"),
                    "name the topic its events arrive on".into(),
                );
            }
            if !topics.insert(&source.topic) {
                return invalid(
                    format!("{key}.topic"),
                    format!(
                        "topic `{}` is another source's: each source reads its own",
                        source.topic
                    ),
                );
            }
            let columns: HashSet<&str> = source.column_names().collect();
            if let Some(reserved) = RESERVED_COLUMNS.iter().find(|r| columns.contains(*r)) {
                return invalid(
                    key,
                    format!("`{reserved}` is a column lambdaflow adds itself; rename the field"),
                );
            }
        }
        Ok(())
    }

    fn check_serving(&self) -> Result<()> {
        let serving = &self.serving;
        let invalid = |key: &str, message: &str| {
            Err(Error::Invalid {
                key: format!("serving.{key}"),
                message: message.into(),
            })
        };
        serving.auth.check("serving.auth")?;
        if serving.sql_max_concurrent == 0 {
            return invalid("sql_max_concurrent", "must be at least 1");
        }
        if serving.query_max_concurrent == Some(0) {
            return invalid("query_max_concurrent", "must be at least 1");
        }
        if serving.query_max_groups == 0 {
            return invalid("query_max_groups", "must be at least 1");
        }
        if !(1..=crate::query::MAX_LIMIT).contains(&serving.query_default_limit) {
            return invalid(
                "query_default_limit",
                &format!("must be between 1 and {}", crate::query::MAX_LIMIT),
            );
        }
        if serving.tls_cert.is_some() != serving.tls_key.is_some() {
            return invalid("tls_cert", "tls_cert and tls_key go together");
        }
        for origin in &serving.allowed_origins {
            let Some((scheme, host)) = origin.split_once("://") else {
                return invalid(
                    "allowed_origins",
                    &format!("`{origin}` is not scheme://host[:port]"),
                );
            };
            if !matches!(scheme, "http" | "https") || host.is_empty() || host.contains('/') {
                return invalid(
                    "allowed_origins",
                    &format!("`{origin}` is not scheme://host[:port]"),
                );
            }
        }
        Ok(())
    }
}

/// Applies `LAMBDAFLOW_<SECTION>__<KEY>=value` overrides; an entry of a list of tables is named
/// after the list, as in `LAMBDAFLOW_SOURCES__PAGEVIEWS__TOPIC`. Variables without `__` after
/// the prefix (such as `LAMBDAFLOW_LOG`) are not config keys and are ignored.
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
        let mut sections = sections.iter();
        while let Some(section) = sections.next() {
            let entry = node
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = match entry {
                toml::Value::Array(entries) => {
                    let name = sections.next().ok_or_else(|| {
                        env_err(format!("`{section}` is a list: name an entry, as in {ENV_PREFIX}{}__<NAME>__<KEY>", section.to_ascii_uppercase()))
                    })?;
                    named_entry(entries, name).ok_or_else(|| {
                        env_err(format!("no entry of `{section}` is named `{name}`"))
                    })?
                }
                entry => entry
                    .as_table_mut()
                    .ok_or_else(|| env_err(format!("`{section}` is not a section")))?,
            };
        }
        let typed = match node.get(leaf) {
            Some(toml::Value::String(_)) => toml::Value::String(value.clone()),
            _ => parse_scalar(&value),
        };
        node.insert(leaf.clone(), typed);
    }
    Ok(())
}

/// The table of `entries` (a list such as `[[sources]]` or `[[views]]`) whose `name` is `name`,
/// ignoring case as environment variable names do.
fn named_entry<'a>(entries: &'a mut [toml::Value], name: &str) -> Option<&'a mut toml::Table> {
    entries
        .iter_mut()
        .filter_map(toml::Value::as_table_mut)
        .find(|entry| {
            let named = entry.get("name").and_then(toml::Value::as_str);
            named.is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
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
fn default_replication_factor() -> i16 {
    1
}
fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_max_body() -> usize {
    16 * 1024 * 1024
}
fn default_vacuum_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_checkpoint_interval() -> u64 {
    100
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
fn default_sql_max_concurrent() -> usize {
    4
}
fn default_sql_max_answer_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_query_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_query_max_groups() -> usize {
    1_000_000
}
fn default_query_limit() -> usize {
    10_000
}
fn default_schedule() -> String {
    "0 0 2 * * *".into()
}
fn default_parallelism() -> usize {
    2
}
fn default_retries() -> u32 {
    2
}
fn default_engine() -> String {
    "local".into()
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

/// The built-in demo config: a small shop and its web tracker, with views over each.
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
    fn demo_config_is_valid_with_two_sources_and_views_over_each() {
        let c = Config::demo();
        assert!(c.kafka.is_embedded());
        for source in &c.sources {
            assert!(c.views_of(&source.name).count() >= 2, "{}", source.name);
        }
        assert_eq!(c.sources.len(), 2);
        let shop = Config::shop();
        assert_eq!(shop.source().name, "events");
        assert_eq!(shop.views.len(), 3);
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
    fn kafka_properties_read_secrets_from_the_environment_and_keep_ours_ours() {
        let with = |properties: &str, vars: &[(&str, &str)]| {
            let text = DEMO_CONFIG.replacen(
                "[kafka]",
                &format!("[kafka.properties]\n{properties}\n\n[kafka]"),
                1,
            );
            Config::from_toml(&text, "t", env(vars))
        };
        let c = with(
            "\"security.protocol\" = \"SASL_SSL\"\n\"sasl.password\" = \"p-${KAFKA_SECRET}-${KAFKA_SUFFIX}\"",
            &[("KAFKA_SECRET", "s3cret"), ("KAFKA_SUFFIX", "x")],
        )
        .unwrap();
        assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
        assert_eq!(c.kafka.properties["sasl.password"], "p-s3cret-x");
        assert_eq!(c.kafka.replication_factor, 1);
        let shown = format!("{:?}", c.kafka);
        assert!(
            shown.contains("sasl.password") && !shown.contains("s3cret"),
            "{shown}"
        );

        let unset = with("\"sasl.password\" = \"${NOT_SET}\"", &[]).unwrap_err();
        assert!(
            unset.to_string().contains("kafka.properties.sasl.password")
                && unset.to_string().contains("`NOT_SET` is not set"),
            "{unset}"
        );
        let ours = with("\"enable.idempotence\" = \"false\"", &[]).unwrap_err();
        assert!(
            ours.to_string()
                .contains("kafka.properties.enable.idempotence"),
            "{ours}"
        );
        let replicas = Config::from_toml(
            DEMO_CONFIG,
            "t",
            env(&[("LAMBDAFLOW_KAFKA__REPLICATION_FACTOR", "0")]),
        )
        .unwrap_err();
        assert!(
            replicas.to_string().contains("kafka.replication_factor"),
            "{replicas}"
        );
    }

    #[test]
    fn env_overrides_reach_list_entries_by_name() {
        let c = Config::from_toml(
            DEMO_CONFIG,
            "t",
            env(&[
                ("LAMBDAFLOW_SOURCES__PAGEVIEWS__TOPIC", "web-hits"),
                ("LAMBDAFLOW_VIEWS__SALES_BY_COUNTRY__RETENTION", "30d"),
            ]),
        )
        .unwrap();
        assert_eq!(c.source_named("pageviews").unwrap().topic, "web-hits");
        assert_eq!(c.source_named("events").unwrap().topic, "events");
        assert_ne!(c.views[0].retention, c.views[1].retention);
        for (var, named) in [
            ("LAMBDAFLOW_SOURCES__CLICKS__TOPIC", "named `clicks`"),
            ("LAMBDAFLOW_SOURCES__TOPIC", "name an entry"),
        ] {
            let err = Config::from_toml(DEMO_CONFIG, "t", env(&[(var, "x")]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(var) && err.contains(named), "{err}");
        }
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

    /// One source in the single `[source]` form, with a view over it.
    const ONE_SOURCE: &str = r#"
        [kafka]
        brokers = "embedded"
        [lake]
        uri = "/tmp/lake"
        [source]
        name = "orders"
        fields = [{ name = "country", type = "string" }]
        [[views]]
        name = "by_country"
        granularity = "hour"
        dimensions = ["country"]
        measures = [{ name = "orders", agg = "count" }]
    "#;

    #[test]
    fn a_view_names_the_source_it_reads_or_is_refused() {
        let named = ONE_SOURCE.replacen("granularity", "source = \"orders\"\ngranularity", 1);
        let config = Config::from_toml(&named, "t", []).unwrap();
        assert_eq!(config.views[0].source.as_deref(), Some("orders"));
        let unknown = named.replacen("source = \"orders\"", "source = \"payments\"", 1);
        let err = Config::from_toml(&unknown, "t", [])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("views.by_country.source") && err.contains("`payments`"),
            "{err}"
        );
    }

    /// Two sources on their own topics, a view over each.
    const TWO_SOURCES: &str = r#"
        [kafka]
        brokers = "embedded"
        [lake]
        uri = "/tmp/lake"
        [[sources]]
        name = "orders"
        topic = "shop-orders"
        fields = [{ name = "country", type = "string" }, { name = "amount", type = "float" }]
        [[sources]]
        name = "pages"
        topic = "web-pages"
        fields = [{ name = "path", type = "string" }]
        [[views]]
        name = "revenue"
        source = "orders"
        granularity = "hour"
        dimensions = ["country"]
        measures = [{ name = "revenue", agg = "sum", field = "amount" }]
        [[views]]
        name = "hits"
        source = "pages"
        granularity = "minute"
        dimensions = ["path"]
        measures = [{ name = "hits", agg = "count" }]
    "#;

    fn refusal(text: &str) -> String {
        Config::from_toml(text, "t", []).unwrap_err().to_string()
    }

    #[test]
    fn several_sources_each_read_their_topic_with_their_views() {
        let config = Config::from_toml(TWO_SOURCES, "t", []).unwrap();
        let topics: Vec<&str> = config.sources.iter().map(|s| s.topic.as_str()).collect();
        assert_eq!(topics, ["shop-orders", "web-pages"]);
        assert_eq!(config.source_of(&config.views[1]).name, "pages");
        let pages = config.scoped(&config.sources[1]);
        assert_eq!(pages.source().topic, "web-pages");
        let names: Vec<&str> = pages.views.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["hits"]);
        assert!(
            config
                .source_named("clicks")
                .unwrap_err()
                .contains("`orders`, `pages`")
        );
    }

    #[test]
    fn the_single_source_form_reads_the_kafka_topic() {
        let config = Config::from_toml(ONE_SOURCE, "t", []).unwrap();
        assert_eq!(config.source().topic, "events");
        let config =
            Config::from_toml(ONE_SOURCE, "t", env(&[("LAMBDAFLOW_KAFKA__TOPIC", "shop")]))
                .unwrap();
        assert_eq!(config.sources.len(), 1);
        assert_eq!(config.source().topic, "shop");
        assert_eq!(config.source_of(&config.views[0]).name, "orders");
    }

    #[test]
    fn sources_are_refused_when_they_clash_or_views_mix_them() {
        let unnamed = TWO_SOURCES.replacen("source = \"pages\"\n", "", 1);
        let err = refusal(&unnamed);
        assert!(
            err.contains("views.hits.source") && err.contains("several"),
            "{err}"
        );
        let foreign =
            TWO_SOURCES.replacen("dimensions = [\"path\"]", "dimensions = [\"country\"]", 1);
        let err = refusal(&foreign);
        assert!(
            err.contains("`country`") && err.contains("source `pages`"),
            "{err}"
        );
        let shared = TWO_SOURCES.replacen("web-pages", "shop-orders", 1);
        let err = refusal(&shared);
        assert!(
            err.contains("sources.pages.topic") && err.contains("another source's"),
            "{err}"
        );
        let twice = TWO_SOURCES.replacen("name = \"pages\"", "name = \"orders\"", 1);
        assert!(refusal(&twice).contains("declared twice"));
        let topicless = TWO_SOURCES.replacen("topic = \"web-pages\"\n", "", 1);
        assert!(refusal(&topicless).contains("sources.pages.topic"));
        let both = format!("{TWO_SOURCES}\n[source]\nname = \"more\"");
        assert!(refusal(&both).contains("not both"));
        let none = &ONE_SOURCE[..ONE_SOURCE.find("[source]").unwrap()];
        assert!(refusal(none).contains("declare a `[source]`"));
    }

    #[test]
    fn the_batch_engine_is_local_or_a_ballista_scheduler() {
        let engine = |value: &str| {
            Config::from_toml(
                DEMO_CONFIG,
                "t",
                env(&[("LAMBDAFLOW_BATCH__ENGINE", value)]),
            )
        };
        assert_eq!(engine("local").unwrap().batch.scheduler(), None);
        assert_eq!(
            engine("ballista://scheduler:50050")
                .unwrap()
                .batch
                .scheduler(),
            Some("scheduler:50050".to_owned())
        );
        for bad in [
            "ballista://scheduler",
            "ballista://scheduler:50050/jobs",
            "http://scheduler:50050",
            "scheduler:50050",
            "Local",
            "",
        ] {
            let err = engine(bad).unwrap_err().to_string();
            assert!(
                err.contains("batch.engine") && err.contains(&format!("`{bad}`")),
                "{bad}: {err}"
            );
        }
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
}
