//! The first occurrences the speed layer keeps since the lowest watermark, mostly on local
//! disk.
//!
//! A swap refolds a view's speed state from the first occurrences beyond its new watermark,
//! so they must be kept until a batch version covers them. Held in memory they grow with
//! every event until the next batch run: a day of events with a nightly batch. Here
//! micro-batches gather in memory up to a bound and then go, as one Arrow IPC file (a
//! *segment*), to local disk. The Kafka log and the lake rebuild them at every start, so
//! nothing here is ever recovered, and the files are unnamed (`O_TMPFILE` where the system
//! has it, removed right after creation elsewhere): they go when the segment is dropped or
//! the process ends, however it ends, so a process killed in a crash loop leaves nothing
//! behind to fill the disk. Memory then holds at most one open segment, whatever the batch
//! interval.
//!
//! Reads stream one record batch at a time, so a swap after millions of events reads them
//! back without holding them.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;

use crate::error::{Error, Result};

/// Rows gathered in memory before they go to disk as one segment.
pub const SEGMENT_ROWS: usize = 1 << 16;

/// Retained first occurrences: sealed segments on disk, then the open one in memory, in the
/// order they were pushed.
pub struct Spill {
    dir: PathBuf,
    segments: Vec<Segment>,
    open: Vec<RecordBatch>,
    open_rows: usize,
    segment_rows: usize,
}

impl std::fmt::Debug for Spill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spill")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("open_rows", &self.open_rows)
            .finish_non_exhaustive()
    }
}

/// One unnamed file of retained rows. It is read only by its owner, one reader at a time,
/// so the file's shared position is never raced.
#[derive(Debug)]
struct Segment {
    file: File,
    rows: usize,
    bytes: u64,
}

/// What a [`Spill`] holds, for metrics and reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpillUsage {
    /// Rows held.
    pub rows: usize,
    /// Bytes of the open segment's Arrow buffers.
    pub memory_bytes: usize,
    /// Bytes of the sealed segments' files.
    pub disk_bytes: u64,
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Spill {
        path: path.to_owned(),
        source,
    }
}

impl Spill {
    /// An empty spill writing its segments to `dir` (the system's temporary directory when
    /// `None`), sealing a segment every `segment_rows` rows. Several spills, also of other
    /// processes, may share a directory.
    pub fn new(dir: Option<&Path>, segment_rows: usize) -> Result<Self> {
        let dir = dir.map_or_else(std::env::temp_dir, Path::to_owned);
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        Ok(Self {
            dir,
            segments: Vec::new(),
            open: Vec::new(),
            open_rows: 0,
            segment_rows: segment_rows.max(1),
        })
    }

    /// From now on, seal a segment every `rows` rows.
    pub fn set_segment_rows(&mut self, rows: usize) {
        self.segment_rows = rows.max(1);
    }

    /// The directory the segments are written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What is held, and where.
    pub fn usage(&self) -> SpillUsage {
        SpillUsage {
            rows: self.open_rows + self.segments.iter().map(|s| s.rows).sum::<usize>(),
            memory_bytes: self
                .open
                .iter()
                .map(RecordBatch::get_array_memory_size)
                .sum(),
            disk_bytes: self.segments.iter().map(|s| s.bytes).sum(),
        }
    }

    /// Appends `batch`; once the open segment holds enough rows it goes to disk.
    pub fn push(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.open_rows += batch.num_rows();
        self.open.push(batch);
        if self.open_rows >= self.segment_rows {
            let open = std::mem::take(&mut self.open);
            self.open_rows = 0;
            let segment = self.write(&open)?;
            self.segments.push(segment);
        }
        Ok(())
    }

    fn write(&self, batches: &[RecordBatch]) -> Result<Segment> {
        let file = tempfile::tempfile_in(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        let schema = batches.first().map_or_else(
            || Arc::new(arrow::datatypes::Schema::empty()),
            RecordBatch::schema,
        );
        let mut writer = FileWriter::try_new(BufWriter::new(&file), &schema)?;
        let mut rows = 0;
        for batch in batches {
            rows += batch.num_rows();
            writer.write(batch)?;
        }
        writer.finish()?;
        drop(writer);
        let bytes = file.metadata().map_err(|e| io_error(&self.dir, e))?.len();
        Ok(Segment { file, rows, bytes })
    }

    fn read(segment: &Segment) -> Result<FileReader<BufReader<&File>>> {
        Ok(FileReader::try_new(BufReader::new(&segment.file), None)?)
    }

    /// Calls `f` with every retained record batch, oldest first.
    pub fn scan(&self, mut f: impl FnMut(&RecordBatch) -> Result<()>) -> Result<()> {
        for segment in &self.segments {
            for batch in Self::read(segment)? {
                f(&batch?)?;
            }
        }
        self.open.iter().try_for_each(f)
    }

    /// Keeps only the rows `keep` selects. A segment keeping every row stays as it is, one
    /// keeping none is deleted, and any other is rewritten.
    pub fn retain(
        &mut self,
        mut keep: impl FnMut(&RecordBatch) -> Result<BooleanArray>,
    ) -> Result<()> {
        let mut segments = Vec::with_capacity(self.segments.len());
        for segment in std::mem::take(&mut self.segments) {
            let mut kept = Vec::new();
            let mut whole = true;
            for batch in Self::read(&segment)? {
                let batch = batch?;
                let mask = keep(&batch)?;
                if mask.true_count() == batch.num_rows() {
                    kept.push(batch);
                } else {
                    whole = false;
                    let batch = filter_record_batch(&batch, &mask)?;
                    if batch.num_rows() > 0 {
                        kept.push(batch);
                    }
                }
            }
            if whole {
                segments.push(segment);
                continue;
            }
            if !kept.is_empty() {
                segments.push(self.write(&kept)?);
            }
        }
        self.segments = segments;
        let mut open = Vec::with_capacity(self.open.len());
        for batch in std::mem::take(&mut self.open) {
            let mask = keep(&batch)?;
            let batch = if mask.true_count() == batch.num_rows() {
                batch
            } else {
                filter_record_batch(&batch, &mask)?
            };
            if batch.num_rows() > 0 {
                open.push(batch);
            }
        }
        self.open_rows = open.iter().map(RecordBatch::num_rows).sum();
        self.open = open;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use super::*;

    fn batch(values: std::ops::Range<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(values))]).unwrap()
    }

    fn values(spill: &Spill) -> Vec<i64> {
        let mut all = Vec::new();
        spill
            .scan(|b| {
                all.extend(b.column(0).as_primitive::<Int64Type>().values());
                Ok(())
            })
            .unwrap();
        all
    }

    #[test]
    fn rows_go_to_disk_in_order_and_come_back_filtered() {
        let mut spill = Spill::new(None, 10).unwrap();
        for start in (0..35).step_by(5) {
            spill.push(batch(start..start + 5)).unwrap();
        }
        let usage = spill.usage();
        assert_eq!(usage.rows, 35);
        assert!(usage.disk_bytes > 0);
        assert_eq!(spill.segments.len(), 3);
        assert_eq!(values(&spill), (0..35).collect::<Vec<_>>());

        spill
            .retain(|b| {
                let v = b.column(0).as_primitive::<Int64Type>();
                Ok(v.iter().map(|v| Some(v.unwrap() >= 12)).collect())
            })
            .unwrap();
        assert_eq!(values(&spill), (12..35).collect::<Vec<_>>());
        assert_eq!(spill.usage().rows, 23);
        assert_eq!(
            spill.segments.iter().map(|s| s.rows).collect::<Vec<_>>(),
            vec![8, 10],
            "the segment of rows 0..10 is deleted, 10..20 rewritten, 20..30 kept"
        );
    }

    #[test]
    fn segments_leave_no_file_to_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::new(Some(dir.path()), 1).unwrap();
        spill.push(batch(0..3)).unwrap();
        assert!(spill.usage().disk_bytes > 0);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "a process killed now leaves nothing in the directory"
        );
    }

    #[test]
    fn two_processes_sharing_a_speed_dir_keep_apart() {
        let parent = tempfile::tempdir().unwrap();
        let mut one = Spill::new(Some(parent.path()), 2).unwrap();
        let mut two = Spill::new(Some(parent.path()), 2).unwrap();
        one.push(batch(0..4)).unwrap();
        two.push(batch(100..102)).unwrap();
        one.retain(|b| Ok(BooleanArray::from(vec![false; b.num_rows()])))
            .unwrap();
        assert_eq!(values(&one), Vec::<i64>::new());
        assert_eq!(
            values(&two),
            vec![100, 101],
            "the other spill's segment is untouched"
        );
    }
}
