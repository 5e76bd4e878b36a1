//! OS-level limits for instances through cgroups, detected at run time: cgroup v1 (memory, cpu,
//! pids hierarchies) or v2 (a unified tree with the controllers enabled). Where neither can be
//! used, instances still run and their status says which limits are not enforced, and why.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use uuid::Uuid;

#[derive(Debug, Clone)]
pub enum Cgroups {
    V1 {
        memory: Option<PathBuf>,
        cpu: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
    V2 {
        root: PathBuf,
    },
    Unavailable(String),
}

/// The limits applied to one instance, and what could not be.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// `cgroup.procs` files the new process must join before it execs.
    pub procs: Vec<CString>,
    pub enforced: Vec<String>,
    pub not_enforced: Vec<String>,
}

const BASE: &str = "/sys/fs/cgroup";

fn writable_group(hierarchy: &Path) -> Option<PathBuf> {
    let dir = hierarchy.join("berth");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

impl Cgroups {
    pub fn detect() -> Self {
        Self::detect_at(Path::new(BASE))
    }

    fn detect_at(base: &Path) -> Self {
        if let Ok(ctrl) = std::fs::read_to_string(base.join("cgroup.controllers")) {
            let wanted = ["memory", "cpu", "pids"];
            let have: Vec<&str> = ctrl.split_whitespace().collect();
            if wanted.iter().all(|w| have.contains(w)) {
                let root = base.join("berth");
                let ok = std::fs::write(base.join("cgroup.subtree_control"), "+memory +cpu +pids")
                    .is_ok()
                    && std::fs::create_dir_all(&root).is_ok()
                    && std::fs::write(root.join("cgroup.subtree_control"), "+memory +cpu +pids")
                        .is_ok();
                if ok {
                    return Self::V2 { root };
                }
                return Self::Unavailable(
                    "cgroup v2 controllers cannot be delegated to Berth (not root, or not writable)"
                        .into(),
                );
            }
            return Self::Unavailable(format!(
                "cgroup v2 has no memory/cpu/pids controllers here (available: '{}')",
                ctrl.trim()
            ));
        }
        let memory = base
            .join("memory/memory.limit_in_bytes")
            .exists()
            .then(|| writable_group(&base.join("memory")))
            .flatten();
        let cpu = base
            .join("cpu/cpu.cfs_quota_us")
            .exists()
            .then(|| writable_group(&base.join("cpu")))
            .flatten();
        let pids = base
            .join("pids/pids.max")
            .exists()
            .then(|| writable_group(&base.join("pids")))
            .flatten();
        if memory.is_none() && cpu.is_none() && pids.is_none() {
            return Self::Unavailable(
                "no writable cgroup v1 or v2 controllers (not root, or cgroups not mounted)".into(),
            );
        }
        Self::V1 { memory, cpu, pids }
    }

    /// Creates (or updates) the instance's groups with the plan's limits.
    pub fn apply(&self, id: Uuid, memory_mib: i64, cpu_tenths: i64) -> Applied {
        let mut out = Applied::default();
        let bytes = memory_mib.max(16) * 1024 * 1024;
        let quota = cpu_tenths.max(1) * 10_000; // per 100 ms period
        let set = |dir: &Path, file: &str, value: String, what: &str, out: &mut Applied| {
            match std::fs::create_dir_all(dir).and_then(|_| std::fs::write(dir.join(file), &value))
            {
                Ok(()) => out.enforced.push(what.to_owned()),
                Err(e) => out.not_enforced.push(format!("{what}: {e}")),
            }
        };
        let name = id.to_string();
        match self {
            Self::Unavailable(why) => {
                out.not_enforced.push(format!("memory, cpu: {why}"));
            }
            Self::V1 { memory, cpu, pids } => {
                let mut groups = Vec::new();
                match memory {
                    Some(m) => {
                        let d = m.join(&name);
                        set(
                            &d,
                            "memory.limit_in_bytes",
                            bytes.to_string(),
                            "memory",
                            &mut out,
                        );
                        groups.push(d);
                    }
                    None => out
                        .not_enforced
                        .push("memory: no writable cgroup v1 memory controller".into()),
                }
                match cpu {
                    Some(c) => {
                        let d = c.join(&name);
                        set(
                            &d,
                            "cpu.cfs_period_us",
                            "100000".into(),
                            "cpu period",
                            &mut Applied::default(),
                        );
                        set(&d, "cpu.cfs_quota_us", quota.to_string(), "cpu", &mut out);
                        groups.push(d);
                    }
                    None => out
                        .not_enforced
                        .push("cpu: no writable cgroup v1 cpu controller".into()),
                }
                if let Some(p) = pids {
                    let d = p.join(&name);
                    set(&d, "pids.max", "1024".into(), "pids", &mut out);
                    groups.push(d);
                }
                out.procs = groups
                    .iter()
                    .filter_map(|d| CString::new(d.join("cgroup.procs").display().to_string()).ok())
                    .collect();
            }
            Self::V2 { root } => {
                let d = root.join(&name);
                set(&d, "memory.max", bytes.to_string(), "memory", &mut out);
                set(&d, "cpu.max", format!("{quota} 100000"), "cpu", &mut out);
                set(&d, "pids.max", "1024".into(), "pids", &mut out);
                out.procs = CString::new(d.join("cgroup.procs").display().to_string())
                    .ok()
                    .into_iter()
                    .collect();
            }
        }
        out
    }

    /// Removes the instance's groups (after its processes are gone).
    pub fn remove(&self, id: Uuid) {
        let name = id.to_string();
        let dirs: Vec<PathBuf> = match self {
            Self::V1 { memory, cpu, pids } => [memory, cpu, pids]
                .into_iter()
                .flatten()
                .map(|h| h.join(&name))
                .collect(),
            Self::V2 { root } => vec![root.join(&name)],
            Self::Unavailable(_) => vec![],
        };
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_without_controllers_reports_why() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "").unwrap();
        let cg = Cgroups::detect_at(dir.path());
        assert!(
            matches!(&cg, Cgroups::Unavailable(why) if why.contains("no memory/cpu/pids")),
            "{cg:?}"
        );
        let applied = cg.apply(Uuid::nil(), 256, 5);
        assert!(applied.enforced.is_empty());
        assert!(applied.procs.is_empty());
        assert_eq!(applied.not_enforced.len(), 1);
    }

    #[test]
    fn cgroup_v1_limits_are_written_where_the_plan_says() {
        let dir = tempfile::tempdir().unwrap();
        for (ctl, file) in [
            ("memory", "memory.limit_in_bytes"),
            ("cpu", "cpu.cfs_quota_us"),
            ("pids", "pids.max"),
        ] {
            std::fs::create_dir_all(dir.path().join(ctl)).unwrap();
            std::fs::write(dir.path().join(ctl).join(file), "").unwrap();
        }
        let cg = Cgroups::detect_at(dir.path());
        let applied = cg.apply(Uuid::nil(), 512, 10);
        assert_eq!(applied.enforced, ["memory", "cpu", "pids"]);
        let group = dir
            .path()
            .join("memory/berth")
            .join(Uuid::nil().to_string());
        assert_eq!(
            std::fs::read_to_string(group.join("memory.limit_in_bytes")).unwrap(),
            "536870912"
        );
        let cpu = dir.path().join("cpu/berth").join(Uuid::nil().to_string());
        assert_eq!(
            std::fs::read_to_string(cpu.join("cpu.cfs_quota_us")).unwrap(),
            "100000"
        );
        assert_eq!(applied.procs.len(), 3);
    }
}
