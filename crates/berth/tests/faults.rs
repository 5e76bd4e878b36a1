//! Crash safety under fault injection: a seeded workload of creates, updates, pauses, resumes and
//! deletes against the real `berth server` binary, which is killed with SIGKILL at random points
//! (while a request is in flight, or while the reconciler works on the last one) and started again.
//! Afterwards, once everything converged:
//! - every service the API accepted exists with its last accepted spec;
//! - every instance that should run runs exactly once (one process tree per instance);
//! - no process and no data directory is left that no service owns;
//! - every deleted service's data is gone.
//!
//! Reproduce a run with `BERTH_FAULT_SEED=<seed> cargo test -p berth --test faults`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const OPS: usize = 60;
const KILLS: usize = 22;

/// splitmix64: small, seedable, the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the test believes a service should be: the last spec the API accepted.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    name: String,
    memory: i64,
    pause: bool,
    deleted: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Create { name: String, engine: &'static str },
    Update { id: String, memory: i64 },
    Pause { id: String, pause: bool },
    Delete { id: String },
}

/// The answer to a request, or `None` when the server died before answering (outcome in doubt).
async fn send(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Option<(u16, Value)> {
    let mut req = http
        .request(method, format!("{base}{path}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(30));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.ok()?;
    let code = resp.status().as_u16();
    let text = resp.text().await.ok()?;
    Some((code, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

fn request(op: &Op) -> (reqwest::Method, String, Option<Value>) {
    match op {
        Op::Create { name, engine } => {
            let body = match *engine {
                "postgres" => json!({"teamId": 1, "name": name, "provider": {"name": "postgres"},
                                     "plan": {"id": 0, "parameters": {"memory": 256}}, "config": {"version": "15"}}),
                _ => json!({"teamId": 1, "name": name, "provider": {"name": "redis"},
                            "plan": {"id": 0, "parameters": {"memory": 128}}}),
            };
            (
                reqwest::Method::POST,
                "/api/managed-services".into(),
                Some(body),
            )
        }
        Op::Update { id, memory } => (
            reqwest::Method::PATCH,
            format!("/api/managed-services/{id}"),
            Some(json!({"plan": {"id": 0, "parameters": {"memory": memory}}})),
        ),
        Op::Pause { id, pause } => (
            reqwest::Method::PATCH,
            format!("/api/managed-services/{id}"),
            Some(json!({"pause": pause})),
        ),
        Op::Delete { id } => (
            reqwest::Method::DELETE,
            format!("/api/managed-services/{id}"),
            None,
        ),
    }
}

/// Picks the next operation from the live model (seeded, so the workload is reproducible as long
/// as the outcomes are; the kills are what they are).
fn pick(rng: &mut Rng, model: &BTreeMap<String, Expected>, n: usize) -> Op {
    let live: Vec<(&String, &Expected)> = model.iter().filter(|(_, e)| !e.deleted).collect();
    let roll = rng.below(100);
    if live.len() < 3 || (roll < 30 && live.len() < 8) {
        let engine = if rng.below(5) == 0 {
            "postgres"
        } else {
            "redis"
        };
        return Op::Create {
            name: format!("svc-{n}"),
            engine,
        };
    }
    let (id, e) = live[rng.below(live.len() as u64) as usize];
    let id = id.clone();
    match roll {
        0..=44 => Op::Update {
            id,
            memory: if e.memory >= 384 { 128 } else { e.memory + 64 },
        },
        45..=74 => Op::Pause {
            id,
            pause: !e.pause,
        },
        _ => Op::Delete { id },
    }
}

/// Applies an accepted request to the model.
fn accept(model: &mut BTreeMap<String, Expected>, op: &Op, answer: &Value) {
    match op {
        Op::Create { name, engine } => {
            let id = answer["id"].as_str().expect("created id").to_owned();
            let memory = if *engine == "postgres" { 256 } else { 128 };
            model.insert(
                id,
                Expected {
                    name: name.clone(),
                    memory,
                    pause: false,
                    deleted: false,
                },
            );
        }
        Op::Update { id, memory } => model.get_mut(id).unwrap().memory = *memory,
        Op::Pause { id, pause } => model.get_mut(id).unwrap().pause = *pause,
        Op::Delete { id } => model.get_mut(id).unwrap().deleted = true,
    }
}

/// After a request the server died on: reads what it recorded, which must be either the state
/// before or the state after the request, never something else.
async fn resolve(s: &TestServer, model: &mut BTreeMap<String, Expected>, op: &Op) -> &'static str {
    match op {
        Op::Create { name, .. } => {
            let (_, list) = s.get("/api/managed-services?includeDeleted=true").await;
            let found: Vec<&Value> = list
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| v["name"] == name.as_str())
                .collect();
            assert!(found.len() <= 1, "a create in doubt made {found:?}");
            match found.first() {
                Some(v) => {
                    accept(model, op, v);
                    "landed"
                }
                None => "lost before the commit",
            }
        }
        Op::Update { id, .. } | Op::Pause { id, .. } | Op::Delete { id } => {
            let (code, v) = s.get(&format!("/api/managed-services/{id}")).await;
            let mut after = model.clone();
            accept(&mut after, op, &Value::Null);
            if code == 404 {
                // Only a delete may make it disappear (a purge right after the restart).
                assert!(
                    matches!(op, Op::Delete { .. }),
                    "{id} vanished after {op:?}"
                );
                *model = after;
                return "landed";
            }
            let seen = observed(&v);
            if seen == after[id] {
                *model = after;
                "landed"
            } else {
                assert_eq!(seen, model[id], "{id} after {op:?} in doubt");
                "lost before the commit"
            }
        }
    }
}

fn observed(v: &Value) -> Expected {
    Expected {
        name: v["name"].as_str().unwrap().to_owned(),
        memory: v["plan"]["parameters"]["memory"].as_i64().unwrap(),
        pause: v["pause"].as_bool().unwrap(),
        deleted: v["status"].get("deletedAt").is_some_and(|d| !d.is_null()),
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Processes working inside `dir` whose parent is not also working inside it: one per running
/// instance (PostgreSQL's backends and Redis's rewrite children hang below their server).
fn process_roots(dir: &std::path::Path) -> Vec<u32> {
    let pids: HashSet<u32> = instance_pids_under(dir).into_iter().collect();
    pids.iter()
        .copied()
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok())
                .unwrap_or(0);
            !pids.contains(&ppid)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_nothing_and_leaves_nothing() {
    let seed: u64 = std::env::var("BERTH_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261122);
    eprintln!("fault injection seed {seed} (BERTH_FAULT_SEED reproduces it)");
    let mut rng = Rng(seed);
    // The operations after which the server is killed: exactly KILLS of them, seeded.
    let mut slots: Vec<usize> = (0..OPS).collect();
    for i in (1..slots.len()).rev() {
        slots.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let kill_after: HashSet<usize> = slots[..KILLS].iter().copied().collect();

    let mut s = TestServer::spawn().await;
    let mut model: BTreeMap<String, Expected> = BTreeMap::new();
    let mut outcomes: HashMap<&'static str, usize> = HashMap::new();
    let mut kills = 0;
    for n in 0..OPS {
        let op = pick(&mut rng, &model, n);
        let (method, path, body) = request(&op);
        let (http, base, token) = (s.http.clone(), s.base.clone(), s.token.clone());
        let call =
            tokio::spawn(async move { send(&http, &base, &token, method, &path, body).await });
        let answer = if kill_after.contains(&n) {
            // Kill while the request is in flight or while the reconciler works on it.
            // A third of the kills land within 2 ms (mostly before the answer), the rest anywhere
            // in the next 400 ms (mostly while the reconciler acts on it).
            let delay = if rng.below(3) == 0 {
                rng.below(3)
            } else {
                rng.below(400)
            };
            tokio::time::sleep(Duration::from_millis(delay)).await;
            s.kill9();
            kills += 1;
            let answer = call.await.unwrap();
            s.restart().await;
            answer
        } else {
            call.await.unwrap()
        };
        let outcome = match answer {
            Some((code, v)) if (200..300).contains(&code) => {
                accept(&mut model, &op, &v);
                "accepted"
            }
            Some((409, _)) => "refused (409)",
            Some((code, v)) => panic!("{op:?} answered {code}: {v}\n{}", tail(&s.server_log())),
            None => resolve(&s, &mut model, &op).await,
        };
        *outcomes.entry(outcome).or_default() += 1;
        eprintln!("op {n:2}: {op:?} -> {outcome}");
    }
    eprintln!("{kills} kills; outcomes {outcomes:?}");
    assert!(kills >= 20);

    // Converge: every service reaches what was last accepted.
    let deadline = Instant::now() + Duration::from_secs(120);
    for (id, want) in &model {
        loop {
            let (code, v) = s.get(&format!("/api/managed-services/{id}")).await;
            let done = match (want.deleted, code) {
                (true, 404) => true,
                (false, 200) => {
                    let state = v["status"]["state"].as_str().unwrap();
                    state == if want.pause { "paused" } else { "synchronized" }
                }
                (false, _) => panic!("accepted service {id} ({want:?}) is gone: {code} {v}"),
                _ => false,
            };
            if done {
                if !want.deleted {
                    assert_eq!(&observed(&v), want, "{id} lost its last accepted spec");
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never converged to {want:?}: {v}\n{}",
                s.server_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Exactly the services that should run do, once each; nothing is left that nobody owns.
    let instances = s.dir.path().join("instances");
    let mut dirs: HashSet<String> = std::fs::read_dir(&instances)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for (id, want) in &model {
        let dir = instances.join(id);
        if want.deleted {
            assert!(!dir.exists(), "deleted service {id} left its data");
            continue;
        }
        assert!(dir.exists(), "service {id} has no data directory");
        let roots = process_roots(&dir);
        let expected = usize::from(!want.pause);
        assert_eq!(
            roots.len(),
            expected,
            "service {id} ({want:?}) runs {} server processes: {roots:?}\n{}",
            roots.len(),
            tail(&s.server_log())
        );
        dirs.remove(id);
    }
    assert!(dirs.is_empty(), "data nobody owns: {dirs:?}");
    let owned: HashSet<u32> = model
        .iter()
        .filter(|(_, e)| !e.deleted)
        .flat_map(|(id, _)| instance_pids_under(&instances.join(id)))
        .collect();
    let stray: Vec<u32> = s
        .instance_pids()
        .into_iter()
        .filter(|p| !owned.contains(p))
        .collect();
    assert!(stray.is_empty(), "processes nobody owns: {stray:?}");
}
