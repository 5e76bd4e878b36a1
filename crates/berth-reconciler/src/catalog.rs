//! The catalog: each provider definition with the backend that serves it.
//!
//! For built-in providers the served definition is narrowed to what this host can run: the
//! `config.version` enum lists only installed majors, newest first, and defaults to the newest.

use std::sync::Arc;

use berth_backend::ProviderBackend;
use berth_types::ProviderDefinition;
use serde_json::Value;

pub struct CatalogEntry {
    pub def: ProviderDefinition,
    pub backend: Arc<dyn ProviderBackend>,
    /// For providers run by the local backend: the installed majors, newest first.
    pub installed_versions: Option<Vec<String>>,
}

impl CatalogEntry {
    /// A built-in provider; its `configSchema.properties.version` is narrowed to `installed`.
    pub fn local(
        mut def: ProviderDefinition,
        backend: Arc<dyn ProviderBackend>,
        installed: Vec<String>,
    ) -> Self {
        if let Some(version) = def
            .config_schema
            .get_mut("properties")
            .and_then(|p| p.get_mut("version"))
            .and_then(Value::as_object_mut)
        {
            version.insert("enum".into(), Value::from(installed.clone()));
            if let Some(newest) = installed.first() {
                version.insert("default".into(), Value::from(newest.clone()));
            }
        }
        Self {
            def,
            backend,
            installed_versions: Some(installed),
        }
    }
}

impl CatalogEntry {
    /// A provider served by a backend of its own (a REST backend).
    pub fn remote(def: ProviderDefinition, backend: Arc<dyn ProviderBackend>) -> Self {
        Self {
            def,
            backend,
            installed_versions: None,
        }
    }

    /// A provider whose definition names a REST backend (`backend.api.endpoint`), with a client
    /// of its own; `None` when the definition names none.
    pub fn rest(def: ProviderDefinition) -> Option<Self> {
        let (endpoint, secret) = def.rest_endpoint()?;
        let backend = berth_backend::rest::RestBackend::new(
            endpoint,
            secret.map(str::to_owned),
            Default::default(),
        );
        Some(Self::remote(def, Arc::new(backend)))
    }

    /// Built into Berth (run by the local backend): never replaced or removed through the API.
    pub fn is_builtin(&self) -> bool {
        self.installed_versions.is_some()
    }
}

/// Every provider Berth knows, built-in and registered. Registration changes it while Berth
/// runs, so readers take a snapshot.
#[derive(Default)]
pub struct Catalog {
    entries: std::sync::RwLock<Vec<Arc<CatalogEntry>>>,
}

impl Catalog {
    pub fn new(entries: Vec<CatalogEntry>) -> Self {
        Self {
            entries: std::sync::RwLock::new(entries.into_iter().map(Arc::new).collect()),
        }
    }

    fn snapshot(&self) -> Vec<Arc<CatalogEntry>> {
        self.entries.read().unwrap().clone()
    }

    pub fn get(&self, name: &str, version: &str) -> Option<Arc<CatalogEntry>> {
        self.snapshot()
            .into_iter()
            .find(|e| e.def.name == name && e.def.version == version)
    }

    /// Adds an entry, or replaces the one with the same name and version.
    pub fn put(&self, entry: CatalogEntry) {
        let mut entries = self.entries.write().unwrap();
        entries.retain(|e| !(e.def.name == entry.def.name && e.def.version == entry.def.version));
        entries.push(Arc::new(entry));
    }

    pub fn remove(&self, name: &str, version: &str) {
        self.entries
            .write()
            .unwrap()
            .retain(|e| !(e.def.name == name && e.def.version == version));
    }

    /// The newest schema version of provider `name` (versions compare by their number: v10 > v9).
    pub fn newest(&self, name: &str) -> Option<Arc<CatalogEntry>> {
        let num = |v: &str| {
            v.trim_start_matches('v')
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse::<u64>()
                .unwrap_or(0)
        };
        self.snapshot()
            .into_iter()
            .filter(|e| e.def.name == name)
            .max_by_key(|e| num(&e.def.version))
    }

    pub fn all(&self) -> Vec<Arc<CatalogEntry>> {
        self.snapshot()
    }
}
