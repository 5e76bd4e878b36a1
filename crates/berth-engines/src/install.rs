//! Discovery of installed engine versions. Nothing is hard-coded: a version is offered only if its
//! binaries are on the host, so a user can never pick a version that cannot start.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The engines Berth runs locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineKind {
    Postgres,
    Redis,
    /// S3 object storage.
    Garage,
}

impl EngineKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "postgres" => Some(Self::Postgres),
            "redis" => Some(Self::Redis),
            "garage" => Some(Self::Garage),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Redis => "redis",
            Self::Garage => "garage",
        }
    }
}

/// One installed server build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    pub kind: EngineKind,
    /// What users select as `config.version`: the major version (`"17"`, `"8"`).
    pub major: String,
    /// The full version the binary reports (`"17.11"`, `"8.1.8"`).
    pub full_version: String,
    /// `PostgreSQL`, `Redis` or `Valkey`.
    pub product: &'static str,
    /// The server binary (`postgres`, `redis-server`, `valkey-server`).
    pub server: PathBuf,
}

impl Installation {
    pub fn bin_dir(&self) -> &Path {
        self.server.parent().unwrap_or(Path::new("/"))
    }
}

/// Every installation found on the host, newest major first within each engine.
#[derive(Debug, Clone, Default)]
pub struct Installations(pub Vec<Installation>);

impl Installations {
    /// Looks under Debian's locations and `engines_dir` (where `scripts/setup.sh` unpacks tarballs).
    pub fn discover(engines_dir: &Path) -> Self {
        let mut found = Vec::new();
        let mut candidates: Vec<(EngineKind, PathBuf)> = Vec::new();
        for pattern_dir in [Path::new("/usr/lib/postgresql"), engines_dir] {
            for entry in read_dir_sorted(pattern_dir) {
                let name = entry.file_name().map(|n| n.to_string_lossy().to_string());
                let Some(name) = name else { continue };
                if pattern_dir == engines_dir && !name.starts_with("postgresql-") {
                    continue;
                }
                candidates.push((EngineKind::Postgres, entry.join("bin/postgres")));
            }
        }
        for entry in read_dir_sorted(engines_dir) {
            let name = entry.file_name().map(|n| n.to_string_lossy().to_string());
            match name.as_deref() {
                Some(n) if n.starts_with("valkey-") => {
                    candidates.push((EngineKind::Redis, entry.join("bin/valkey-server")))
                }
                Some(n) if n.starts_with("redis-") => {
                    candidates.push((EngineKind::Redis, entry.join("bin/redis-server")))
                }
                Some(n) if n.starts_with("garage-") => {
                    candidates.push((EngineKind::Garage, entry.join("bin/garage")))
                }
                _ => {}
            }
        }
        candidates.push((EngineKind::Redis, PathBuf::from("/usr/bin/redis-server")));
        candidates.push((EngineKind::Redis, PathBuf::from("/usr/bin/valkey-server")));

        for (kind, server) in candidates {
            if !server.is_file() {
                continue;
            }
            let Some((product, full)) = probe_version(kind, &server) else {
                continue;
            };
            let major = full.split('.').next().unwrap_or_default().to_owned();
            // One installation per major: the first found (Debian's, then the engines dir) wins.
            if found
                .iter()
                .any(|i: &Installation| i.kind == kind && i.major == major)
            {
                continue;
            }
            found.push(Installation {
                kind,
                major,
                full_version: full,
                product,
                server,
            });
        }
        found.sort_by(|a, b| {
            (a.kind as u8).cmp(&(b.kind as u8)).then(
                b.major
                    .parse::<u32>()
                    .unwrap_or(0)
                    .cmp(&a.major.parse::<u32>().unwrap_or(0)),
            )
        });
        Self(found)
    }

    pub fn of(&self, kind: EngineKind) -> impl Iterator<Item = &Installation> {
        self.0.iter().filter(move |i| i.kind == kind)
    }

    pub fn get(&self, kind: EngineKind, major: &str) -> Option<&Installation> {
        self.of(kind).find(|i| i.major == major)
    }

    /// The newest installed major, the default when a create leaves `version` out.
    pub fn newest(&self, kind: EngineKind) -> Option<&Installation> {
        self.of(kind).next()
    }

    pub fn majors(&self, kind: EngineKind) -> Vec<String> {
        self.of(kind).map(|i| i.major.clone()).collect()
    }
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs `<server> --version` and parses `postgres (PostgreSQL) 17.11` or
/// `Redis server v=7.0.15 ...` / `Valkey server v=8.1.8 ...`.
fn probe_version(kind: EngineKind, server: &Path) -> Option<(&'static str, String)> {
    let out = Command::new(server).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    match kind {
        EngineKind::Postgres => {
            let v = text.split_whitespace().nth(2)?;
            Some(("PostgreSQL", v.to_owned()))
        }
        EngineKind::Redis => {
            let product = if text.starts_with("Valkey") {
                "Valkey"
            } else {
                "Redis"
            };
            let v = text.split_whitespace().find_map(|w| w.strip_prefix("v="))?;
            Some((product, v.to_owned()))
        }
        EngineKind::Garage => {
            // `garage cargo:2.5.0 [features: ...]` or `garage v2.5.0 ...`
            let w = text.split_whitespace().nth(1)?;
            let v = w.rsplit(':').next()?.trim_start_matches('v');
            Some(("Garage", v.to_owned()))
        }
    }
}
