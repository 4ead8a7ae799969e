//! `lambdaflow import`: files into a source's raw and quarantine tables
//! ([`lambdaflow_batch::import`]), with their progress on stderr — a bar with rows/s and an
//! ETA on a terminal, a plain line every few seconds otherwise (a log, a CI job) — then a batch
//! run so that the imported events count, unless asked not to.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lambdaflow_batch::Error as BatchError;
use lambdaflow_batch::import::files::resolve;
use lambdaflow_batch::import::{ImportProgress, ImportReport, Importer, OnProgress};
use lambdaflow_batch::views::records::{RunRecord, Trigger};
use lambdaflow_common::config::Config;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::commands::batch_run_for;
use crate::error::{Error, Result};

/// How often a plain progress line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// What `lambdaflow import` prints on stdout.
#[derive(Debug, Serialize)]
pub struct Imported {
    /// What the import did, per file and in all.
    pub import: ImportReport,
    /// The batch run that followed, unless `--no-batch`.
    pub batch_run: Option<RunRecord>,
}

/// What to import, and where to.
#[derive(Debug)]
pub struct ImportOptions<'a> {
    /// Files, directories, globs or `s3://` prefixes.
    pub paths: &'a [String],
    /// The source (needed when the config has several).
    pub source: Option<&'a str>,
    /// No batch run at the end.
    pub no_batch: bool,
}

/// Imports the files `options` name; `shutdown` stops it (each commit is whole: what was
/// committed stays, and the same import resumes after it). A batch run already in progress
/// is not waited for: the imported events count from the next one.
pub async fn import(
    config: Arc<Config>,
    options: ImportOptions<'_>,
    shutdown: CancellationToken,
) -> Result<Imported> {
    let source = config
        .pick_source(options.source)
        .map_err(|why| Error::UnknownSource {
            command: "import",
            why,
        })?;
    let files = resolve(options.paths).await?;
    let importer = Importer::new(&config, source).await?;
    let display = Display::new(files.iter().map(|f| f.size).sum());
    let progress: OnProgress = {
        let display = display.clone();
        Arc::new(move |p: &ImportProgress| display.show(p))
    };
    let report = tokio::select! {
        report = importer.import(&files, Some(progress)) => report?,
        () = shutdown.cancelled() => return Err(Error::ImportInterrupted),
    };
    display.finish(&report);
    let batch_run = match options.no_batch {
        true => None,
        false => match batch_run_for(Trigger::Import, config, false, shutdown).await {
            Ok(record) => Some(record),
            Err(Error::Batch(e)) if matches!(*e, BatchError::RunInProgress { .. }) => {
                eprintln!("import: {e}; the imported events count from its next run");
                None
            }
            Err(e) => return Err(e),
        },
    };
    Ok(Imported {
        import: report,
        batch_run,
    })
}

/// The progress display: a bar on a terminal, plain lines otherwise.
#[derive(Clone)]
enum Display {
    Bar(ProgressBar),
    Plain(Arc<Mutex<Instant>>),
}

impl Display {
    fn new(bytes: u64) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self::Plain(Arc::new(Mutex::new(Instant::now())));
        }
        let bar = ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{bar:30} {percent:>3}% {bytes}/{total_bytes} · {msg} · ETA {eta}",
        )
        .expect("the template is valid");
        bar.set_style(style);
        Self::Bar(bar)
    }

    fn show(&self, p: &ImportProgress) {
        let rate = p.records as f64 / p.elapsed.as_secs_f64().max(1e-3);
        match self {
            Self::Bar(bar) => {
                bar.set_position(p.bytes_done);
                bar.set_message(format!(
                    "{} rows, {:.0} rows/s · file {}/{} {}",
                    p.records,
                    rate,
                    p.files_done + 1,
                    p.files,
                    p.file
                ));
            }
            Self::Plain(last) => {
                let mut last = last
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if last.elapsed() < PLAIN_EVERY {
                    return;
                }
                *last = Instant::now();
                let done = p.bytes_done as f64 / p.bytes.max(1) as f64;
                let eta = match done > 0.0 {
                    true => format!("{:.0} s", p.elapsed.as_secs_f64() * (1.0 - done) / done),
                    false => "unknown".into(),
                };
                eprintln!(
                    "import: {} rows ({rate:.0} rows/s), {:.0}% of {} file(s), ETA {eta}, at {}",
                    p.records,
                    done * 100.0,
                    p.files,
                    p.file
                );
            }
        }
    }

    fn finish(&self, report: &ImportReport) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
        eprintln!(
            "import: {} file(s), {} records in {:.1} s: {} archived, {} duplicates, {} quarantined{}",
            report.files.len(),
            report.records,
            report.seconds,
            report.archived,
            report.duplicates,
            report.quarantined,
            match report.files.iter().filter(|f| f.already_imported).count() {
                0 => String::new(),
                n => format!(", {n} file(s) already imported"),
            }
        );
    }
}
