//! A sorted run of id hashes in a file of local disk, and what memory keeps to search it: a
//! Bloom filter that answers most lookups alone, and the first id of every block of the file,
//! so that a lookup the filter lets through reads one block.
//!
//! The file is unnamed (`O_TMPFILE` where the system has it, removed right after creation
//! elsewhere): it disappears when the run is dropped or the process ends, however it ends,
//! so nothing is ever left to clean up.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use fastbloom::BloomFilter;

/// How often a run's filter sends an id it does not hold to search the run.
const FALSE_POSITIVE_RATE: f64 = 0.01;

const ID_BYTES: usize = size_of::<u128>();

/// Ids a lookup reads at once: one 4 KiB page.
const BLOCK_IDS: usize = 256;

/// Ids a merge reads from each run at once.
const READ_IDS: usize = 4096;

/// Sorted ids without repeats, on disk.
#[derive(Debug)]
pub(crate) struct Run {
    file: File,
    len: usize,
    filter: BloomFilter,
    /// The first id of every block of [`BLOCK_IDS`] ids.
    fences: Box<[u128]>,
}

impl Run {
    /// Writes `len` sorted ids without repeats to a new file in `dir`.
    pub(crate) fn write(
        dir: &Path,
        len: usize,
        ids: impl IntoIterator<Item = io::Result<u128>>,
    ) -> io::Result<Self> {
        let file = tempfile::tempfile_in(dir)?;
        let mut filter =
            BloomFilter::with_false_pos(FALSE_POSITIVE_RATE).expected_items(len.max(1));
        let mut fences = Vec::with_capacity(len.div_ceil(BLOCK_IDS));
        let mut out = BufWriter::with_capacity(READ_IDS * ID_BYTES, &file);
        let mut written = 0;
        for id in ids {
            let id = id?;
            if written % BLOCK_IDS == 0 {
                fences.push(id);
            }
            filter.insert_hash(id as u64);
            out.write_all(&id.to_le_bytes())?;
            written += 1;
        }
        out.flush()?;
        drop(out);
        debug_assert_eq!(written, len, "a run's length is known before it is written");
        Ok(Self {
            file,
            len: written,
            filter,
            fences: fences.into_boxed_slice(),
        })
    }

    /// Two runs (no id in both) as one new run in `dir`.
    pub(crate) fn merge(dir: &Path, a: &Run, b: &Run) -> io::Result<Self> {
        let len = a.len + b.len;
        let (mut a, mut b) = (a.ids().peekable(), b.ids().peekable());
        let merged = std::iter::from_fn(|| match (a.peek(), b.peek()) {
            (Some(Ok(x)), Some(Ok(y))) if x > y => b.next(),
            (Some(_), _) => a.next(),
            (None, _) => b.next(),
        });
        Self::write(dir, len, merged)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether the run holds `id`: the filter alone for most ids it does not hold, one block
    /// read otherwise.
    pub(crate) fn contains(&self, id: u128) -> io::Result<bool> {
        if !self.filter.contains_hash(id as u64) {
            return Ok(false);
        }
        let block = match self.fences.binary_search(&id) {
            Ok(_) => return Ok(true),
            Err(0) => return Ok(false),
            Err(after) => after - 1,
        };
        let start = block * BLOCK_IDS;
        let count = BLOCK_IDS.min(self.len - start);
        let mut bytes = [0u8; BLOCK_IDS * ID_BYTES];
        let bytes = &mut bytes[..count * ID_BYTES];
        read_at(&self.file, bytes, start)?;
        let (mut low, mut high) = (0, count);
        while low < high {
            let mid = (low + high) / 2;
            match id_at(bytes, mid).cmp(&id) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return Ok(true),
            }
        }
        Ok(false)
    }

    /// The run's ids in order, read [`READ_IDS`] at a time.
    fn ids(&self) -> RunIds<'_> {
        RunIds {
            run: self,
            next: 0,
            buffer: Vec::new(),
            at: 0,
        }
    }

    /// Bytes of memory: the filter and the fences.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.filter.num_bits() / 8 + self.fences.len() * ID_BYTES
    }

    /// Bytes of the file.
    pub(crate) fn disk_bytes(&self) -> u64 {
        (self.len * ID_BYTES) as u64
    }
}

/// Reads ids `start..` of `file` into `bytes`. A run's file is read only by its owner, one
/// read at a time, so the shared position is never raced.
fn read_at(mut file: &File, bytes: &mut [u8], start: usize) -> io::Result<()> {
    file.seek(SeekFrom::Start((start * ID_BYTES) as u64))?;
    file.read_exact(bytes)
}

fn id_at(bytes: &[u8], i: usize) -> u128 {
    let mut id = [0u8; ID_BYTES];
    id.copy_from_slice(&bytes[i * ID_BYTES..(i + 1) * ID_BYTES]);
    u128::from_le_bytes(id)
}

struct RunIds<'a> {
    run: &'a Run,
    next: usize,
    buffer: Vec<u8>,
    at: usize,
}

impl Iterator for RunIds<'_> {
    type Item = io::Result<u128>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at * ID_BYTES == self.buffer.len() {
            if self.next == self.run.len {
                return None;
            }
            let count = READ_IDS.min(self.run.len - self.next);
            self.buffer.resize(count * ID_BYTES, 0);
            if let Err(e) = read_at(&self.run.file, &mut self.buffer, self.next) {
                // A failed read ends the iteration after reporting the error.
                self.next = self.run.len;
                self.buffer.clear();
                self.at = 0;
                return Some(Err(e));
            }
            self.next += count;
            self.at = 0;
        }
        let id = id_at(&self.buffer, self.at);
        self.at += 1;
        Some(Ok(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, ids: &[u128]) -> Run {
        Run::write(dir, ids.len(), ids.iter().copied().map(Ok)).unwrap()
    }

    #[test]
    fn lookups_find_exactly_the_ids_written_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<u128> = (0..1000u128).map(|i| i * 7 + 3).collect();
        let run = run(dir.path(), &ids);
        assert_eq!(run.len(), 1000);
        for id in 0..7100u128 {
            assert_eq!(run.contains(id).unwrap(), id % 7 == 3 && id < 7000, "{id}");
        }
    }

    #[test]
    fn a_merge_interleaves_both_runs_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let evens: Vec<u128> = (0..5000u128).map(|i| 2 * i).collect();
        let odds: Vec<u128> = (0..3000u128).map(|i| 2 * i + 1).collect();
        let merged = Run::merge(
            dir.path(),
            &run(dir.path(), &evens),
            &run(dir.path(), &odds),
        )
        .unwrap();
        let read: Vec<u128> = merged.ids().map(Result::unwrap).collect();
        let mut expected = [evens, odds].concat();
        expected.sort_unstable();
        assert_eq!(read, expected);
        assert!(merged.contains(5999).unwrap() && !merged.contains(6001).unwrap());
    }

    #[test]
    fn the_files_are_unnamed_and_memory_is_a_fraction_of_the_ids() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<u128> = (0..100_000u128)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        let run = run(dir.path(), &sorted);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(run.disk_bytes(), 1_600_000);
        let per_id = run.memory_bytes() as f64 / ids.len() as f64;
        assert!(per_id < 1.5, "{per_id} bytes of memory per id");
    }
}
