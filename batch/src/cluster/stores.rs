//! The object stores of a cluster process: the ones DataFusion knows (the local file system),
//! and any other lake location (`s3://bucket`) built on first use through delta-rs' store
//! factories, so a scheduler or an executor reads the lake with the settings the rest of the
//! product uses (`AWS_*` for S3) and needs no configuration of its own.

use std::sync::Arc;

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use object_store::ObjectStore;
use url::Url;

/// DataFusion's registry, which a miss fills from delta-rs' factories.
#[derive(Debug, Default)]
pub struct LakeStores {
    known: DefaultObjectStoreRegistry,
}

impl ObjectStoreRegistry for LakeStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.known.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        self.known.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.known.get_store(url) {
            return Ok(store);
        }
        let mut root = url.clone();
        root.set_path("/");
        root.set_query(None);
        let store = deltalake::logstore::store_for(&root, std::iter::empty::<(String, String)>())
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        self.known.register_store(&root, store.clone());
        Ok(store)
    }
}
