//! Failpoints in the object store, for the fault suite: set `LAMBDAFLOW_FAULTS` and every
//! local (`file://`) table, run record and lock of the process goes through a store that
//! misbehaves on a chosen put. Unset (the normal case), nothing is installed.
//!
//! `LAMBDAFLOW_FAULTS` is a comma-separated list of `<action>:<path part>#<n>`: the action
//! fires on the `n`-th put (1-based) whose path contains `<path part>`, once:
//! - `crash-before`: the process aborts before the put, as if killed (e.g. on a
//!   `_delta_log/` path: after a commit's Parquet files were written, before the commit);
//! - `crash-after`: the put lands, then the process aborts;
//! - `fail-before`: the put returns an error and writes nothing;
//! - `fail-after`: the put lands but returns an error, so the caller cannot know it landed;
//! - `slow`: `slow:<path part>#<ms>` delays every matching put by that many milliseconds.
//!
//! Two more act on a batch run's tasks instead of the store, on the `n`-th attempt of the task
//! whose id contains the part (`recompute:sales_by_country`), once:
//! - `fail-task`: the attempt fails with a transient error, which the run retries;
//! - `break-task`: the attempt fails with an error that is not retried.
//!
//! Aborting is the in-process form of SIGKILL: no destructor, flush or graceful shutdown runs,
//! which is why this module is compiled only with the cargo feature `faults`, which only the
//! end-to-end test binary turns on: a production build cannot be made to abort by an
//! environment variable.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deltalake::DeltaResult;
use deltalake::logstore::{
    ObjectStoreFactory, ObjectStoreRef, StorageConfig, object_store_factories,
};
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use url::Url;

use crate::error::Error;

/// The environment variable that installs failpoints.
pub const FAULTS_VAR: &str = "LAMBDAFLOW_FAULTS";

/// What a failpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    CrashBefore,
    CrashAfter,
    FailBefore,
    FailAfter,
    Slow(u64),
    FailTask,
    BreakTask,
}

/// One failpoint: an action on the `nth` put whose path contains `part` (a slow store delays
/// every such put, by the number it was given).
#[derive(Debug)]
struct Fault {
    action: Action,
    part: String,
    nth: u64,
    seen: AtomicU64,
}

impl Fault {
    fn parse(text: &str) -> Result<Self, Error> {
        let bad = || Error::FaultSpec {
            entry: text.to_owned(),
        };
        let (action, rest) = text.split_once(':').ok_or_else(bad)?;
        let (part, n) = rest.rsplit_once('#').ok_or_else(bad)?;
        let n: u64 = n.parse().map_err(|_| bad())?;
        let action = match action {
            "crash-before" => Action::CrashBefore,
            "crash-after" => Action::CrashAfter,
            "fail-before" => Action::FailBefore,
            "fail-after" => Action::FailAfter,
            "slow" => Action::Slow(n),
            "fail-task" => Action::FailTask,
            "break-task" => Action::BreakTask,
            _ => return Err(bad()),
        };
        Ok(Self {
            action,
            part: part.to_owned(),
            nth: n,
            seen: AtomicU64::new(0),
        })
    }

    /// The action to take on a put to `location`, if this failpoint fires.
    fn fires(&self, location: &Path) -> Option<Action> {
        if matches!(self.action, Action::FailTask | Action::BreakTask) {
            return None;
        }
        self.fires_on(location.as_ref())
    }

    /// The action to take on the next event named `name`, if this failpoint fires.
    fn fires_on(&self, name: &str) -> Option<Action> {
        if !name.contains(&self.part) {
            return None;
        }
        let count = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        match self.action {
            Action::Slow(_) => Some(self.action),
            action => (count == self.nth).then_some(action),
        }
    }
}

/// The failpoints installed, for [`task_fault`].
static INSTALLED: OnceLock<Arc<Vec<Fault>>> = OnceLock::new();

/// The error of this attempt of batch task `task`, when a `fail-task` or `break-task`
/// failpoint fires on it.
pub fn task_fault(task: &str) -> Option<Error> {
    let faults = INSTALLED.get()?;
    faults
        .iter()
        .filter(|f| matches!(f.action, Action::FailTask | Action::BreakTask))
        .find_map(|f| f.fires_on(task))
        .map(|action| Error::Failpoint {
            task: task.to_owned(),
            transient: action == Action::FailTask,
        })
}

/// Parses `spec` and wraps every local store the process opens from now on.
pub fn install(spec: &str) -> crate::Result<()> {
    let faults: Vec<Fault> = spec
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| Fault::parse(s.trim()))
        .collect::<Result<_, _>>()?;
    let faults = Arc::new(faults);
    let _ = INSTALLED.set(faults.clone());
    let scheme = Url::parse("file://").expect("a valid URL");
    let registry = object_store_factories();
    let inner = registry
        .get(&scheme)
        .map(|f| f.value().clone())
        .ok_or(Error::FaultStore)?;
    tracing::warn!(%spec, "failpoints installed in the object store");
    registry.insert(scheme, Arc::new(FaultyFactory { inner, faults }));
    Ok(())
}

/// Installs the failpoints of [`FAULTS_VAR`] when it is set.
pub fn install_from_env() -> crate::Result<()> {
    match std::env::var(FAULTS_VAR) {
        Ok(spec) if !spec.is_empty() => install(&spec),
        _ => Ok(()),
    }
}

struct FaultyFactory {
    inner: Arc<dyn ObjectStoreFactory>,
    faults: Arc<Vec<Fault>>,
}

impl ObjectStoreFactory for FaultyFactory {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        let (store, path) = self.inner.parse_url_opts(url, config)?;
        let store: ObjectStoreRef = Arc::new(FaultyStore {
            inner: store,
            faults: self.faults.clone(),
        });
        Ok((store, path))
    }
}

/// A store that forwards everything and applies the failpoints to puts.
#[derive(Debug)]
struct FaultyStore {
    inner: ObjectStoreRef,
    faults: Arc<Vec<Fault>>,
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

fn injected(location: &Path, when: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "Faulty",
        source: format!("failpoint: put of {location} failed {when}").into(),
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let fired: Vec<Action> = self
            .faults
            .iter()
            .filter_map(|f| f.fires(location))
            .collect();
        for action in &fired {
            match action {
                Action::Slow(ms) => {
                    tracing::debug!(%location, ms, "failpoint: slow put");
                    tokio::time::sleep(Duration::from_millis(*ms)).await;
                }
                Action::CrashBefore => {
                    tracing::error!(%location, "failpoint: crashing before the put");
                    std::process::abort();
                }
                Action::FailBefore => {
                    tracing::warn!(%location, "failpoint: failing the put before writing");
                    return Err(injected(location, "before writing"));
                }
                Action::CrashAfter | Action::FailAfter | Action::FailTask | Action::BreakTask => {}
            }
        }
        let result = self.inner.put_opts(location, payload, opts).await?;
        for action in &fired {
            match action {
                Action::CrashAfter => {
                    tracing::error!(%location, "failpoint: crashing after the put");
                    std::process::abort();
                }
                Action::FailAfter => {
                    tracing::warn!(%location, "failpoint: failing the put after it landed");
                    return Err(injected(location, "after it landed"));
                }
                _ => {}
            }
        }
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_fire_on_the_nth_matching_put() {
        let fault = Fault::parse("fail-after:_delta_log/#2").unwrap();
        let commit = Path::from("raw/events/_delta_log/00000000000000000001.json");
        let data = Path::from("raw/events/event_date=2026-01-01/part-0.parquet");
        assert_eq!(fault.fires(&data), None);
        assert_eq!(fault.fires(&commit), None);
        assert_eq!(fault.fires(&commit), Some(Action::FailAfter));
        assert_eq!(fault.fires(&commit), None, "once");
        let slow = Fault::parse("slow:.parquet#250").unwrap();
        assert_eq!(slow.fires(&data), Some(Action::Slow(250)));
        assert_eq!(slow.fires(&data), Some(Action::Slow(250)), "every time");
        for bad in [
            "crash",
            "crash-before:x",
            "explode:x#1",
            "fail-before:x#one",
        ] {
            assert!(Fault::parse(bad).is_err(), "{bad}");
        }
    }
}
