//! An in-process feed of which services' records changed, so that a read model (the API's list
//! of services) refreshes only those instead of reading everything on every request.
//!
//! Each write that changes what a service's resource shows records the service's id *after* its
//! transaction commits: whoever sees an id here finds the change in the database.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use berth_types::ServiceId;

/// How many changes are kept; a reader further behind reloads everything.
const KEEP: usize = 4096;

#[derive(Debug, Default)]
pub struct ChangeFeed {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    version: u64,
    log: VecDeque<(u64, ServiceId)>,
    /// Changes up to this version have left the log.
    floor: u64,
}

impl ChangeFeed {
    pub fn record(&self, id: ServiceId) {
        let mut i = self.inner.lock().unwrap();
        i.version += 1;
        let v = i.version;
        i.log.push_back((v, id));
        if i.log.len() > KEEP {
            if let Some((v, _)) = i.log.pop_front() {
                i.floor = v;
            }
        }
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.inner.lock().unwrap().version
    }

    /// The services changed after `since` and the version now; `None` for the list when the
    /// changes since then are no longer all known.
    pub fn since(&self, since: u64) -> (u64, Option<Vec<ServiceId>>) {
        let i = self.inner.lock().unwrap();
        if since < i.floor {
            return (i.version, None);
        }
        let mut seen = HashSet::new();
        let ids = i
            .log
            .iter()
            .filter(|(v, id)| *v > since && seen.insert(*id))
            .map(|(_, id)| *id)
            .collect();
        (i.version, Some(ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_gets_each_changed_id_once_and_reloads_when_too_far_behind() {
        let feed = ChangeFeed::default();
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let v0 = feed.version();
        feed.record(a);
        feed.record(b);
        feed.record(a);
        let (v, ids) = feed.since(v0);
        assert_eq!(v, 3);
        assert_eq!(ids, Some(vec![a, b]));
        assert_eq!(feed.since(v).1, Some(vec![]));
        for _ in 0..KEEP + 1 {
            feed.record(b);
        }
        assert_eq!(feed.since(v).1, None, "the log no longer reaches back to v");
    }
}
