//! Si's media store: an [`object_store`] chosen by URL.
//!
//! | `MEDIA_STORE_URL` | backend | credentials |
//! |---|---|---|
//! | `file:///var/lib/si-media` | local directory (development, tests, a mounted volume) | none |
//! | `memory://` | in memory (tests only: lost on exit) | none |
//! | `s3://bucket[/prefix]` | Amazon S3 or an S3-compatible store | the `AWS_*` environment (keys, region, `AWS_ENDPOINT`, web identity / IRSA) |
//! | `gs://bucket[/prefix]` | Google Cloud Storage | the `GOOGLE_*` environment (service account, workload identity) |
//! | `az://container[/prefix]`, `abfs://…`, `https://<account>.blob.core.windows.net/…` | Azure Blob Storage | the `AZURE_*` environment (account, key, managed identity) |
//!
//! Objects are written with `PutMode::Create` under deterministic keys: the
//! second write of the same item finds it there and counts as done, so a
//! restarted stage never stores an item twice.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMode, PutOptions,
    PutPayload,
};

/// The media store and the prefix objects go under.
#[derive(Debug, Clone)]
pub struct MediaStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// Whether the backend keeps object attributes (Content-Type); the local
    /// file system and memory do not.
    attributes: bool,
}

/// What a put came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Written now.
    Created,
    /// Already there (an earlier attempt, or a replay after a restart).
    Existed,
}

impl MediaStore {
    /// Opens the store `url` names; cloud credentials come from the environment.
    ///
    /// # Errors
    /// An unknown scheme, a bad URL, or a backend that cannot be configured.
    pub fn open(url: &str) -> anyhow::Result<Self> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| anyhow::anyhow!("MEDIA_STORE_URL {url:?} is not a URL: {e}"))?;
        let (scheme, prefix) = ObjectStoreScheme::parse(&parsed)
            .map_err(|e| anyhow::anyhow!("MEDIA_STORE_URL {url:?}: {e}"))?;
        let (store, attributes): (Arc<dyn ObjectStore>, bool) = match scheme {
            ObjectStoreScheme::Local => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| anyhow::anyhow!("MEDIA_STORE_URL {url:?}: not a local path"))?;
                std::fs::create_dir_all(&dir).map_err(|e| {
                    anyhow::anyhow!("MEDIA_STORE_URL: cannot create {}: {e}", dir.display())
                })?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)?;
                return Ok(Self {
                    store: Arc::new(fs),
                    prefix: Path::default(),
                    attributes: false,
                });
            }
            ObjectStoreScheme::Memory => (Arc::new(object_store::memory::InMemory::new()), false),
            ObjectStoreScheme::AmazonS3 => (
                Arc::new(
                    object_store::aws::AmazonS3Builder::from_env()
                        .with_url(url)
                        .build()?,
                ),
                true,
            ),
            ObjectStoreScheme::GoogleCloudStorage => (
                Arc::new(
                    object_store::gcp::GoogleCloudStorageBuilder::from_env()
                        .with_url(url)
                        .build()?,
                ),
                true,
            ),
            ObjectStoreScheme::MicrosoftAzure => (
                Arc::new(
                    object_store::azure::MicrosoftAzureBuilder::from_env()
                        .with_url(url)
                        .build()?,
                ),
                true,
            ),
            other => anyhow::bail!(
                "MEDIA_STORE_URL {url:?}: {other:?} is not supported (file, s3, gs, az)"
            ),
        };
        Ok(Self {
            store,
            prefix,
            attributes,
        })
    }

    /// The full path of `key`.
    fn path(&self, key: &str) -> Path {
        let mut path = self.prefix.clone();
        for part in key.split('/') {
            path = path.clone().join(part);
        }
        path
    }

    /// Writes `bytes` under `key` unless an object is there already.
    ///
    /// # Errors
    /// When the store fails (worth retrying later).
    pub async fn put_once(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: Option<&str>,
    ) -> object_store::Result<Put> {
        let mut attributes = Attributes::new();
        if self.attributes
            && let Some(t) = content_type
        {
            attributes.insert(Attribute::ContentType, t.to_owned().into());
        }
        let options = PutOptions {
            mode: PutMode::Create,
            attributes,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&self.path(key), PutPayload::from_bytes(bytes), options)
            .await
        {
            Ok(_) => Ok(Put::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Put::Existed),
            Err(e) => Err(e),
        }
    }

    /// The objects directly under the folder `dir` (a key without the last
    /// part): (last part of the key, size).
    ///
    /// # Errors
    /// When the store fails.
    pub async fn list_folder(&self, dir: &str) -> object_store::Result<Vec<(String, u64)>> {
        use futures::TryStreamExt as _;
        let listed: Vec<object_store::ObjectMeta> =
            self.store.list(Some(&self.path(dir))).try_collect().await?;
        Ok(listed
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?.to_owned();
                Some((name, meta.size))
            })
            .collect())
    }

    /// The size of the object under `key`.
    ///
    /// # Errors
    /// When the object is missing or the store fails.
    pub async fn size(&self, key: &str) -> object_store::Result<u64> {
        Ok(self.store.head(&self.path(key)).await?.size)
    }

    /// The bytes stored under `key` and their content type, when the
    /// backend keeps it.
    ///
    /// # Errors
    /// When the object is missing (`NotFound`) or the store fails.
    pub async fn get_typed(&self, key: &str) -> object_store::Result<(Bytes, Option<String>)> {
        let got = self.store.get(&self.path(key)).await?;
        let content_type = got
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string());
        Ok((got.bytes().await?, content_type))
    }

    /// The bytes stored under `key` (tests and tools).
    ///
    /// # Errors
    /// When the object is missing or the store fails.
    pub async fn get(&self, key: &str) -> object_store::Result<Bytes> {
        self.store.get(&self.path(key)).await?.bytes().await
    }
}
