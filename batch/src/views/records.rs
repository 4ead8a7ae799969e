//! Batch run records, kept under `<lake>/_lambdaflow/runs/`.
//!
//! `runs/<id>.json` holds one [`RunRecord`] per run, rewritten as the run moves from `queued`
//! to `running` (with progress) to `succeeded` or `failed`; `GET /v1/batch/runs` and
//! `lambdaflow batch run` show them as they are stored. Ids start with the UTC time, so
//! listing them in reverse order lists the newest first. Times are typed in memory and stored
//! as RFC 3339 text in UTC with milliseconds and a `Z` ([`format_time`]).

use std::sync::Arc;

use crate::cluster::JobShape;
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use deltalake::DeltaTableBuilder;
use futures::TryStreamExt;
use lambdaflow_common::watermark::Watermark;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::lake::retention::Expired;
use crate::lake::vacuum::Vacuumed;

const RUNS: &str = "runs";

/// The last task of every run; it runs once every task before it is done, whatever their
/// outcome, so that one view failing for good does not stop the lake from being vacuumed.
pub const VACUUM: &str = "vacuum";

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Accepted, not started.
    Queued,
    /// Holding the lock and computing.
    Running,
    /// Every view published.
    Succeeded,
    /// Stopped by an error; views published before the error stay, the rest keep their
    /// previous version.
    Failed,
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// `lambdaflow batch run`.
    Cli,
    /// The cron schedule.
    Schedule,
    /// `POST /v1/batch/runs`.
    Api,
    /// A process found a view whose batch version was computed under another definition.
    Redefinition,
    /// `lambdaflow import`, once its files are in.
    Import,
}

/// How a view was brought up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every date recomputed: `--full`, a new view, or a changed definition.
    Full,
    /// Only the dates with new raw rows recomputed.
    Incremental,
    /// Already at the raw version read: nothing written.
    Unchanged,
}

/// Where a task of a run's graph is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for the tasks before it, or for a slot.
    Pending,
    /// Being done (or waiting to retry after a transient error).
    Running,
    /// Done.
    Succeeded,
    /// Failed for good: its error was not transient, or its retries ran out.
    Failed,
    /// Not done, because a task before it failed.
    Skipped,
}

/// One task of a run's graph: `expire:<source>` (retention of a source's tables),
/// `recompute:<view>`, `publish:<view>`, and `vacuum` last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// `<kind>:<source or view>`, or `vacuum`.
    pub id: String,
    /// Where it is.
    pub state: TaskState,
    /// Attempts made; a transient error is retried up to `batch.retries` times.
    pub attempts: u32,
    /// When its first attempt started.
    #[serde(with = "time::optional")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it succeeded, failed for good or was skipped.
    #[serde(with = "time::optional")]
    pub finished_at: Option<DateTime<Utc>>,
    /// What it counted ([`Task::unit`]): raw rows it read (recompute), view rows it wrote
    /// (publish), or files it deleted (expire, vacuum).
    pub rows: u64,
    /// The last attempt's error.
    pub error: Option<String>,
}

impl Task {
    /// A task not started.
    pub fn pending(id: String) -> Self {
        Self {
            id,
            state: TaskState::Pending,
            attempts: 0,
            started_at: None,
            finished_at: None,
            rows: 0,
            error: None,
        }
    }

    /// What [`Task::rows`] counts: `files` for expire and vacuum, `rows` for the rest.
    pub fn unit(&self) -> &'static str {
        match self.id == VACUUM || self.id.starts_with("expire:") {
            true => "files",
            false => "rows",
        }
    }

    /// Seconds from its start to its end (or to now, while it runs).
    pub fn seconds(&self) -> Option<f64> {
        let start = self.started_at?;
        let end = self.finished_at.unwrap_or_else(now);
        Some((end - start).num_milliseconds() as f64 / 1000.0)
    }
}

/// One view's part of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewOutcome {
    /// View name.
    pub name: String,
    /// How it was brought up to date.
    pub mode: Mode,
    /// Dates recomputed (all dates of the raw table for a full recompute).
    pub dates: usize,
    /// Raw rows in the files scanned.
    pub rows_read: u64,
    /// View rows written.
    pub rows_written: u64,
    /// The view table version published, if anything was.
    pub version: Option<u64>,
    /// Dates a full recompute kept as they were because the raw table no longer holds them
    /// (expired by retention).
    #[serde(default)]
    pub kept_dates: usize,
    /// Wall time in seconds.
    pub seconds: f64,
    /// The stages and tasks of its job, when it ran on a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<JobShape>,
}

/// One source's part of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceOutcome {
    /// The source's name.
    pub name: String,
    /// The version of its raw table read.
    pub raw_version: Option<u64>,
    /// The offsets of its topic that its views now cover.
    pub watermark: Option<Watermark>,
    /// Why its views failed, when they did: the other sources' views still published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The record of one batch run (`GET /v1/batch/runs/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Sortable id: UTC start time, then a random suffix.
    pub id: String,
    /// Where the run is.
    pub status: RunStatus,
    /// What started it.
    pub trigger: Trigger,
    /// Whether every date of every view was recomputed.
    pub full: bool,
    /// Where the view plans ran: `local`, or the cluster's `ballista://host:port`.
    #[serde(default = "local")]
    pub engine: String,
    /// The stages and tasks of its views' cluster jobs, summed (absent for a local run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<JobShape>,
    /// When it was accepted.
    #[serde(with = "time")]
    pub queued_at: DateTime<Utc>,
    /// When it took the lock.
    #[serde(with = "time::optional")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    #[serde(with = "time::optional")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The raw table version read, when the deployment has one source.
    pub raw_version: Option<u64>,
    /// The Kafka offsets the views now cover, when the deployment has one source.
    pub watermark: Option<Watermark>,
    /// Per source, in config order, as each starts: its raw version and watermark.
    #[serde(default)]
    pub sources: Vec<SourceOutcome>,
    /// What retention deleted before the views were computed, per table with a retention.
    #[serde(default)]
    pub expired: Vec<Expired>,
    /// Raw rows in the files scanned, summed over views.
    pub rows_read: u64,
    /// View rows written, summed over views.
    pub rows_written: u64,
    /// Event dates recomputed by any view, `YYYY-MM-DD`.
    pub dates: Vec<String>,
    /// Per view, as each finishes: source by source in config order, each source's views in
    /// config order.
    pub views: Vec<ViewOutcome>,
    /// What vacuum deleted after the views were published, per table.
    #[serde(default)]
    pub vacuumed: Vec<Vacuumed>,
    /// Why vacuum failed, when it did: the views stay published and the next run vacuums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vacuum_error: Option<String>,
    /// What the run is doing now, while it runs.
    pub progress: Option<String>,
    /// Its tasks, in the order they were planned.
    #[serde(default)]
    pub tasks: Vec<Task>,
    /// `[before, after]` task ids: a task starts once every task before it succeeded.
    #[serde(default)]
    pub edges: Vec<[String; 2]>,
    /// Why it failed.
    pub error: Option<String>,
}

fn local() -> String {
    "local".into()
}

/// Now, to the millisecond: the precision records are stored with, so that a record read back
/// equals the one written.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

/// `time` as the text records store: RFC 3339, UTC, milliseconds, `Z`
/// (`2026-11-23T04:05:06.789Z`).
pub fn format_time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A time stored by [`format_time`] (or any RFC 3339 text), if `text` is one.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Serde of times as [`format_time`] text (chrono's own serde would write nanoseconds).
pub(crate) mod time {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer, de};

    use super::{format_time, parse_time};

    pub(crate) fn serialize<S: Serializer>(time: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_time(time))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        parse_time(&text)
            .ok_or_else(|| de::Error::custom(format!("`{text}` is not an RFC 3339 time")))
    }

    /// An optional time: `null` when absent.
    pub(crate) mod optional {
        use chrono::{DateTime, Utc};
        use serde::{Deserialize, Deserializer, Serializer, de};

        use super::{format_time, parse_time};

        pub(crate) fn serialize<S: Serializer>(
            time: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match time {
                Some(time) => s.serialize_str(&format_time(time)),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| {
                    parse_time(&text).ok_or_else(|| {
                        de::Error::custom(format!("`{text}` is not an RFC 3339 time"))
                    })
                })
                .transpose()
        }
    }

    /// A time that reads as `None` when it is not one (a torn or hand-edited file): the
    /// lock's times, where an unreadable heartbeat means a stale lock, not an error.
    pub(crate) mod lenient {
        use chrono::{DateTime, Utc};
        use serde::{Deserialize, Deserializer, Serializer};

        use super::{format_time, parse_time};

        pub(crate) fn serialize<S: Serializer>(
            time: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            s.serialize_str(&time.as_ref().map(format_time).unwrap_or_default())
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            Ok(parse_time(&String::deserialize(d)?))
        }
    }
}

impl RunRecord {
    /// A new queued run.
    pub fn queued(trigger: Trigger, full: bool) -> Self {
        let queued_at = now();
        let id = format!(
            "{}-{:06x}",
            queued_at.format("%Y%m%dT%H%M%S%3fZ"),
            rand::random::<u32>() & 0xff_ffff
        );
        Self {
            id,
            status: RunStatus::Queued,
            trigger,
            full,
            engine: local(),
            cluster: None,
            queued_at,
            started_at: None,
            finished_at: None,
            raw_version: None,
            expired: Vec::new(),
            vacuumed: Vec::new(),
            vacuum_error: None,
            watermark: None,
            sources: Vec::new(),
            rows_read: 0,
            rows_written: 0,
            dates: Vec::new(),
            views: Vec::new(),
            progress: None,
            tasks: Vec::new(),
            edges: Vec::new(),
            error: None,
        }
    }

    /// Ends what a stopped run left: running tasks failed with `error`, pending ones skipped.
    pub fn stop_tasks(&mut self, error: &str) {
        let at = now();
        for task in &mut self.tasks {
            match task.state {
                TaskState::Running => {
                    task.state = TaskState::Failed;
                    task.error = Some(error.to_owned());
                }
                TaskState::Pending => task.state = TaskState::Skipped,
                _ => continue,
            }
            task.finished_at = Some(at);
        }
    }

    /// The task `id`, which the run planned.
    pub fn task(&mut self, id: &str) -> &mut Task {
        let at = self.tasks.iter().position(|t| t.id == id);
        &mut self.tasks[at.unwrap_or_else(|| panic!("task {id} was planned"))]
    }

    /// Marks every task after `id` in the graph, transitively, skipped (those not done yet,
    /// [`VACUUM`] aside), and returns their ids.
    pub fn skip_after(&mut self, id: &str) -> Vec<String> {
        let mut skipped = Vec::new();
        let mut after: Vec<String> = vec![id.to_owned()];
        while let Some(before) = after.pop() {
            let next: Vec<String> = self
                .edges
                .iter()
                .filter(|[from, _]| *from == before)
                .map(|[_, to]| to.clone())
                .collect();
            for to in next {
                let task = self.task(&to);
                if task.state == TaskState::Pending && to != VACUUM {
                    task.state = TaskState::Skipped;
                    task.finished_at = Some(now());
                    skipped.push(to.clone());
                    after.push(to);
                }
            }
        }
        skipped
    }
}

/// Whether `id` has the shape of a run id, so that it can name a file.
pub fn is_run_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The run records of one lake (and the store the run lock, [`super::lock`], shares).
#[derive(Debug, Clone)]
pub struct History {
    store: Arc<dyn ObjectStore>,
    root: String,
}

impl History {
    /// The history of `lake`, through the same object store configuration as its tables.
    pub fn new(lake: &Lake) -> Result<Self> {
        let url = lake.platform();
        let store = DeltaTableBuilder::from_url(url.clone())
            .and_then(|b| b.build_storage())
            .map_err(|source| Error::Delta {
                table: url.to_string(),
                source,
            })?
            .object_store(None);
        Ok(Self {
            store,
            root: url.to_string(),
        })
    }

    /// The store of `<lake>/_lambdaflow/`.
    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// An error of the store while doing `what`.
    pub(crate) fn store_err(&self, what: &str) -> impl Fn(object_store::Error) -> Error + '_ {
        let context = format!("{what} under {}", self.root);
        move |source| Error::Store {
            context: context.clone(),
            source,
        }
    }

    /// Writes `record` (replacing an earlier state of the same run).
    pub async fn save(&self, record: &RunRecord) -> Result<()> {
        let path = Path::from(format!("{RUNS}/{}.json", record.id));
        let body = serde_json::to_vec_pretty(record).expect("records serialise");
        self.store
            .put(&path, PutPayload::from(body))
            .await
            .map_err(self.store_err("writing a run record"))?;
        Ok(())
    }

    /// The record of run `id`, if there is one.
    pub async fn get(&self, id: &str) -> Result<Option<RunRecord>> {
        if !is_run_id(id) {
            return Ok(None);
        }
        let path = Path::from(format!("{RUNS}/{id}.json"));
        let bytes = match self.store.get(&path).await {
            Ok(found) => found.bytes().await,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => Err(e),
        }
        .map_err(self.store_err("reading a run record"))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::Unreadable {
                table: self.root.clone(),
                what: format!("run record {id}"),
                source,
            })
    }

    /// The newest `limit` runs, newest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<RunRecord>> {
        self.read(&self.newest(limit).await?).await
    }

    /// The files of the newest `limit` runs, newest first, as the store lists them: their
    /// write times, sizes and entity tags change whenever a record is saved, which is what an
    /// answer's version can follow without reading them.
    pub async fn newest(&self, limit: usize) -> Result<Vec<ObjectMeta>> {
        let mut files: Vec<ObjectMeta> = self
            .store
            .list(Some(&Path::from(RUNS)))
            .try_collect()
            .await
            .map_err(self.store_err("listing run records"))?;
        files.retain(|meta| {
            meta.location
                .filename()
                .is_some_and(|name| name.ends_with(".json"))
        });
        files.sort_unstable_by(|a, b| b.location.cmp(&a.location));
        files.truncate(limit);
        Ok(files)
    }

    /// The records of `files` (from [`Self::newest`]), in their order; a file gone since the
    /// listing is skipped.
    pub async fn read(&self, files: &[ObjectMeta]) -> Result<Vec<RunRecord>> {
        let mut records = Vec::with_capacity(files.len());
        for meta in files {
            let id = meta.location.filename().unwrap_or_default();
            if let Some(record) = self.get(id.trim_end_matches(".json")).await? {
                records.push(record);
            }
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_sort_by_time_and_name_files_safely() {
        let a = RunRecord::queued(Trigger::Cli, false);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = RunRecord::queued(Trigger::Api, true);
        assert!(a.id < b.id, "{} {}", a.id, b.id);
        assert!(is_run_id(&a.id));
        for bad in ["", "../x", "a/b", "a.json", &"x".repeat(65)] {
            assert!(!is_run_id(bad), "{bad}");
        }
    }

    #[test]
    fn times_are_stored_as_before_rfc3339_millis_utc() {
        let mut record = RunRecord::queued(Trigger::Cli, false);
        record.queued_at = parse_time("2026-11-23T04:05:06.789Z").unwrap();
        record.started_at = parse_time("2026-11-23T04:05:07Z");
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["queued_at"], "2026-11-23T04:05:06.789Z");
        assert_eq!(json["started_at"], "2026-11-23T04:05:07.000Z");
        assert_eq!(json["finished_at"], serde_json::Value::Null);
        let back: RunRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
        let now = now();
        assert_eq!(parse_time(&format_time(&now)), Some(now));
    }

    fn graph() -> RunRecord {
        let mut record = RunRecord::queued(Trigger::Cli, false);
        for id in [
            "expire:s",
            "recompute:a",
            "publish:a",
            "recompute:b",
            "publish:b",
        ] {
            record.tasks.push(Task::pending(id.into()));
        }
        record.tasks.push(Task::pending(VACUUM.into()));
        for [from, to] in [
            ["expire:s", "recompute:a"],
            ["recompute:a", "publish:a"],
            ["publish:a", VACUUM],
            ["expire:s", "recompute:b"],
            ["recompute:b", "publish:b"],
            ["publish:b", VACUUM],
        ] {
            record.edges.push([from.into(), to.into()]);
        }
        record
    }

    fn states(record: &RunRecord) -> Vec<(&str, TaskState)> {
        record
            .tasks
            .iter()
            .map(|t| (t.id.as_str(), t.state))
            .collect()
    }

    #[test]
    fn a_failure_skips_what_follows_it_but_not_vacuum() {
        use TaskState::*;
        let mut record = graph();
        record.task("recompute:a").state = Failed;
        assert_eq!(record.skip_after("recompute:a"), ["publish:a"]);
        record.task("expire:s").state = Failed;
        assert_eq!(record.skip_after("expire:s"), ["recompute:b", "publish:b"]);
        assert_eq!(
            states(&record),
            [
                ("expire:s", Failed),
                ("recompute:a", Failed),
                ("publish:a", Skipped),
                ("recompute:b", Skipped),
                ("publish:b", Skipped),
                (VACUUM, Pending),
            ]
        );
    }

    #[test]
    fn a_stopped_run_leaves_no_task_running_or_pending() {
        use TaskState::*;
        let mut record = graph();
        record.task("expire:s").state = Succeeded;
        record.task("recompute:a").state = Running;
        record.stop_tasks("cancelled");
        assert_eq!(
            states(&record),
            [
                ("expire:s", Succeeded),
                ("recompute:a", Failed),
                ("publish:a", Skipped),
                ("recompute:b", Skipped),
                ("publish:b", Skipped),
                (VACUUM, Skipped),
            ]
        );
        assert_eq!(
            record.task("recompute:a").error.as_deref(),
            Some("cancelled")
        );
        assert!(record.tasks[1..].iter().all(|t| t.finished_at.is_some()));
        assert!(record.tasks[0].finished_at.is_none());
    }
}
