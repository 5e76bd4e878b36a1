//! Spawning, watching and stopping instance processes.
//!
//! Instances run in their own process group (so a Ctrl-C of `berth server` does not reach them, and
//! they outlive it) and, before `exec`, join their cgroups and drop to the instances' OS user.
//! A process is identified by its pid *and* its working directory (the instance's data directory),
//! so a recycled pid is never mistaken for an instance.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_engines::{Launch, RunAs};

/// Starts `launch` with `cwd` as working directory, output appended to `log`.
/// Returns the child; the caller reaps it.
pub fn spawn(
    launch: &Launch,
    cwd: &Path,
    log: &Path,
    cgroup_procs: Vec<CString>,
    run_as: Option<RunAs>,
) -> std::io::Result<tokio::process::Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    let mut cmd = std::process::Command::new(&launch.program);
    cmd.args(&launch.args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .process_group(0);
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe functions
    // (open, write, close, setgroups, setgid, setuid) on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let pid = libc::getpid();
            let mut buf = [0u8; 24];
            let text = format_pid(pid, &mut buf);
            for procs in &cgroup_procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd >= 0 {
                    libc::write(fd, text.as_ptr().cast(), text.len());
                    libc::close(fd);
                }
            }
            if let Some(ids) = run_as {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(ids.gid) != 0
                    || libc::setuid(ids.uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    tokio::process::Command::from(cmd).spawn()
}

/// Decimal digits of `pid` without allocating (allocation is not allowed after fork).
fn format_pid(pid: i32, buf: &mut [u8; 24]) -> &[u8] {
    let mut n = pid as u32;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Whether `pid` is a live (not zombie) process working in `dir`.
pub fn alive(pid: u32, dir: &Path) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = std::fs::read_to_string(proc.join("stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself contain spaces.
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    std::fs::read_link(proc.join("cwd"))
        .map(|cwd| cwd.starts_with(dir))
        .unwrap_or(false)
}

/// Every live process with its parent and working directory, read from `/proc` once (at start,
/// to find the servers a crash left unrecorded: killed between the spawn and the pid file).
pub struct ProcTable(Vec<(u32, u32, PathBuf)>);

impl ProcTable {
    pub fn scan() -> Self {
        let mut all = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let mut fields = stat.rsplit(')').next().unwrap_or("").split_whitespace();
            if matches!(fields.next(), Some("Z") | Some("X") | None) {
                continue;
            }
            let ppid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            if let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) {
                all.push((pid, ppid, cwd));
            }
        }
        Self(all)
    }

    /// The processes working in `dir` that are not children of another one there: the servers
    /// (PostgreSQL's backends and Redis's rewrite children hang below theirs).
    pub fn servers_in(&self, dir: &Path) -> Vec<u32> {
        let inside: Vec<(u32, u32)> = self
            .0
            .iter()
            .filter(|(_, _, cwd)| cwd.starts_with(dir))
            .map(|(pid, ppid, _)| (*pid, *ppid))
            .collect();
        inside
            .iter()
            .filter(|(_, ppid)| !inside.iter().any(|(p, _)| p == ppid))
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// SIGKILL to the groups of every server working in `dir` but `keep`.
    pub fn kill_others_in(&self, dir: &Path, keep: Option<u32>) {
        for pid in self.servers_in(dir) {
            if Some(pid) != keep && alive(pid, dir) {
                tracing::warn!(pid, dir = %dir.display(), "killing a server no record keeps");
                kill_group(pid);
            }
        }
    }
}

/// Asks the process to stop with `signal`, waits up to `grace`, then kills its whole group.
pub async fn stop(pid: u32, dir: &Path, signal: i32, grace: Duration) {
    if !alive(pid, dir) {
        // Not ours any more: its pid (and so its group id) may belong to someone else now.
        return;
    }
    // SAFETY: plain syscall on a pid we verified belongs to this instance.
    unsafe {
        libc::kill(pid as i32, signal);
    }
    let deadline = Instant::now() + grace;
    while alive(pid, dir) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kill_group(pid);
    while alive(pid, dir) && Instant::now() < deadline + Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// SIGKILL to the instance's process group (its children included).
fn kill_group(pgid: u32) {
    // SAFETY: plain syscall; the group was created for this instance at spawn (process_group(0)).
    unsafe {
        libc::kill(-(pgid as i32), libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pids_format_without_allocation() {
        let mut buf = [0u8; 24];
        assert_eq!(super::format_pid(0, &mut buf), b"0");
        assert_eq!(super::format_pid(4194304, &mut buf), b"4194304");
    }
}
