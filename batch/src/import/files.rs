//! What `lambdaflow import` was pointed at, as a list of files with their formats: local
//! files, directories (their files of a known format), globs, and `s3://` objects or prefixes
//! (every object of a known format under the prefix), read with the lake's S3 settings.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use deltalake::DeltaTableBuilder;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::error::{Error, Result};

/// How a file's records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON event per line (`.ndjson`, `.jsonl`, `.json`).
    Ndjson,
    /// A header row naming the fields, then one event per row (`.csv`).
    Csv,
    /// Apache Parquet, one event per row (`.parquet`).
    Parquet,
}

impl Format {
    /// The format a file name's extension says, if it names one.
    pub fn of(name: &str) -> Option<Self> {
        let extension = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match extension.as_str() {
            "ndjson" | "jsonl" | "json" => Some(Self::Ndjson),
            "csv" => Some(Self::Csv),
            "parquet" | "parq" => Some(Self::Parquet),
            _ => None,
        }
    }
}

/// One file to import.
#[derive(Debug, Clone)]
pub struct ImportFile {
    /// The file as the import names it: its path, or its `s3://` URL. Quarantined records
    /// carry it as their `topic`.
    pub name: String,
    /// How its records are written.
    pub format: Format,
    /// Its size in bytes.
    pub size: u64,
    location: Location,
}

#[derive(Debug, Clone)]
enum Location {
    Local(PathBuf),
    Remote {
        store: Arc<dyn ObjectStore>,
        path: object_store::path::Path,
    },
}

/// A file's bytes on local disk (a remote one downloaded to a temporary file, removed on
/// drop) and the BLAKE3 hash of its content.
#[derive(Debug)]
pub struct Local {
    /// Where to read it.
    pub path: PathBuf,
    /// The hex BLAKE3 hash of its content: what makes an import of it exactly once (BLAKE3
    /// rather than SHA-256: the hash is a pass over the whole file before the import, and
    /// BLAKE3 takes a fraction of SHA-256's time on a CPU without SHA extensions).
    pub blake3: String,
    /// The bytes hashed: what is read of it, even if it grows meanwhile.
    pub size: u64,
    _download: Option<tempfile::TempPath>,
}

impl ImportFile {
    /// The file on local disk, with its content hash: a local file is read once to hash it, a
    /// remote one downloaded to a temporary file, hashed on the way.
    pub async fn fetch(&self) -> Result<Local> {
        let io = |source| Error::Import {
            file: self.name.clone(),
            message: format!("reading the file: {source}"),
        };
        match &self.location {
            Location::Local(path) => {
                let path = path.clone();
                let reading = path.clone();
                let hashed = tokio::task::spawn_blocking(move || {
                    let mut file = std::fs::File::open(&reading)?;
                    let mut hasher = blake3::Hasher::new();
                    let mut buffer = vec![0; 1 << 20];
                    let mut size = 0;
                    loop {
                        match std::io::Read::read(&mut file, &mut buffer)? {
                            0 => break,
                            n => {
                                hasher.update(&buffer[..n]);
                                size += n as u64;
                            }
                        }
                    }
                    Ok::<_, std::io::Error>((hasher.finalize().to_hex().to_string(), size))
                })
                .await
                .map_err(|e| Error::Task {
                    task: "hashing a file",
                    message: e.to_string(),
                })?
                .map_err(io)?;
                let (blake3, size) = hashed;
                Ok(Local {
                    path,
                    blake3,
                    size,
                    _download: None,
                })
            }
            Location::Remote { store, path } => {
                let store_err = |source: object_store::Error| Error::Import {
                    file: self.name.clone(),
                    message: format!("downloading the object: {source}"),
                };
                let local = |source| Error::Import {
                    file: self.name.clone(),
                    message: format!("writing its temporary local copy: {source}"),
                };
                let temp = tempfile::NamedTempFile::new()
                    .map_err(local)?
                    .into_temp_path();
                let mut out = tokio::fs::File::create(&temp).await.map_err(local)?;
                let mut stream = store.get(path).await.map_err(store_err)?.into_stream();
                let mut hasher = blake3::Hasher::new();
                let mut size = 0;
                while let Some(bytes) = stream.try_next().await.map_err(store_err)? {
                    hasher.update(&bytes);
                    size += bytes.len() as u64;
                    out.write_all(&bytes).await.map_err(local)?;
                }
                out.flush().await.map_err(local)?;
                Ok(Local {
                    path: temp.to_path_buf(),
                    blake3: hasher.finalize().to_hex().to_string(),
                    size,
                    _download: Some(temp),
                })
            }
        }
    }
}

/// The files `args` name, in order, each once. A file named on its own must have a known
/// format; a directory, glob or prefix contributes its files of a known format. Names that
/// match nothing are an error, so that a typo does not import nothing quietly.
pub async fn resolve(args: &[String]) -> Result<Vec<ImportFile>> {
    let mut files: Vec<ImportFile> = Vec::new();
    for arg in args {
        let found = match Url::parse(arg) {
            Ok(url) if url.scheme().len() > 1 && url.scheme() != "file" => {
                remote(arg, &url).await?
            }
            _ => local(arg)?,
        };
        if found.is_empty() {
            return Err(Error::Import {
                file: arg.clone(),
                message: "no NDJSON, CSV or Parquet file there".into(),
            });
        }
        for file in found {
            if !files.iter().any(|f| f.name == file.name) {
                files.push(file);
            }
        }
    }
    Ok(files)
}

fn local(arg: &str) -> Result<Vec<ImportFile>> {
    let arg = arg.strip_prefix("file://").unwrap_or(arg);
    let unreadable = |path: &Path, source: std::io::Error| Error::Import {
        file: path.display().to_string(),
        message: source.to_string(),
    };
    let named = |path: PathBuf| -> Result<ImportFile> {
        let name = path.display().to_string();
        let format = Format::of(&name).ok_or_else(|| Error::Import {
            file: name.clone(),
            message: "unknown format: name it .ndjson, .jsonl, .json, .csv or .parquet".into(),
        })?;
        let size = std::fs::metadata(&path)
            .map_err(|e| unreadable(&path, e))?
            .len();
        Ok(ImportFile {
            name,
            format,
            size,
            location: Location::Local(path),
        })
    };
    let path = Path::new(arg);
    if arg.contains(['*', '?', '[']) && !path.exists() {
        let pattern = glob::glob(arg).map_err(|e| Error::Import {
            file: arg.to_owned(),
            message: format!("not a glob: {e}"),
        })?;
        let mut paths = Vec::new();
        for entry in pattern {
            let path = entry.map_err(|e| {
                let path = e.path().to_owned();
                unreadable(&path, e.into())
            })?;
            if path.is_file() && Format::of(&path.display().to_string()).is_some() {
                paths.push(path);
            }
        }
        return paths.into_iter().map(named).collect();
    }
    if path.is_dir() {
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| unreadable(path, e))? {
            let entry = entry.map_err(|e| unreadable(path, e))?;
            let path = entry.path();
            if path.is_file() && Format::of(&path.display().to_string()).is_some() {
                paths.push(path);
            }
        }
        paths.sort();
        return paths.into_iter().map(named).collect();
    }
    Ok(vec![named(path.to_owned())?])
}

/// An object, or the objects of a known format under a prefix, in a bucket read with the
/// lake's settings (`AWS_*` variables).
async fn remote(arg: &str, url: &Url) -> Result<Vec<ImportFile>> {
    let failed = |message: String| Error::Import {
        file: arg.to_owned(),
        message,
    };
    let mut root = url.clone();
    root.set_path("/");
    let store = DeltaTableBuilder::from_url(root.clone())
        .and_then(|b| b.build_storage())
        .map_err(|e| failed(e.to_string()))?
        .object_store(None);
    let key = url.path().trim_start_matches('/');
    let path = object_store::path::Path::from(key);
    let file = |path: object_store::path::Path, size: u64, format: Format| ImportFile {
        name: format!("{}{path}", root),
        format,
        size,
        location: Location::Remote {
            store: store.clone(),
            path,
        },
    };
    if !key.is_empty() && !key.ends_with('/') {
        match store.head(&path).await {
            Ok(meta) => {
                let format = Format::of(key).ok_or_else(|| {
                    failed(
                        "unknown format: name it .ndjson, .jsonl, .json, .csv or .parquet".into(),
                    )
                })?;
                return Ok(vec![file(meta.location, meta.size, format)]);
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(failed(e.to_string())),
        }
    }
    let prefix = (!key.is_empty()).then_some(&path);
    let mut objects: Vec<object_store::ObjectMeta> = store
        .list(prefix)
        .try_collect()
        .await
        .map_err(|e| failed(e.to_string()))?;
    objects.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(objects
        .into_iter()
        .filter_map(|meta| {
            let format = Format::of(meta.location.as_ref())?;
            Some(file(meta.location, meta.size, format))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(Format::of("a/b.ndjson"), Some(Format::Ndjson));
        assert_eq!(Format::of("b.JSONL"), Some(Format::Ndjson));
        assert_eq!(Format::of("b.csv"), Some(Format::Csv));
        assert_eq!(Format::of("b.parquet"), Some(Format::Parquet));
        assert_eq!(Format::of("b.txt"), None);
        assert_eq!(Format::of("parquet"), None);
    }

    #[tokio::test]
    async fn paths_directories_and_globs_resolve_to_files_of_known_formats() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.csv", "b.ndjson", "c.parquet", "notes.txt"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let root = dir.path().display().to_string();
        let names = |files: Vec<ImportFile>| -> Vec<String> {
            files
                .iter()
                .map(|f| f.name.trim_start_matches(&root).to_owned())
                .collect()
        };
        let all = resolve(std::slice::from_ref(&root)).await.unwrap();
        assert_eq!(names(all), ["/a.csv", "/b.ndjson", "/c.parquet"]);
        let globbed = resolve(&[format!("{root}/*.csv"), format!("{root}/a.csv")])
            .await
            .unwrap();
        assert_eq!(names(globbed), ["/a.csv"]);
        let everything = resolve(&[format!("{root}/*")]).await.unwrap();
        assert_eq!(names(everything), ["/a.csv", "/b.ndjson", "/c.parquet"]);
        let error = resolve(&[format!("{root}/notes.txt")]).await.unwrap_err();
        assert!(error.to_string().contains("unknown format"), "{error}");
        let error = resolve(&[format!("{root}/*.json")]).await.unwrap_err();
        assert!(error.to_string().contains("no NDJSON"), "{error}");
        let error = resolve(&[format!("{root}/missing.csv")]).await.unwrap_err();
        assert!(error.to_string().contains("missing.csv"), "{error}");
    }
}
