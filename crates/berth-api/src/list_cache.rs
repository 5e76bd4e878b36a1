//! The list of services as a read model: each service's resource, encoded once, kept until the
//! store says that service changed ([`Store::services_changed_since`]). A list request refreshes
//! only the services that changed since the last one and concatenates the cached bytes, so its
//! cost stays flat however many services there are and however busy the reconciler is.

use std::collections::HashMap;
use std::sync::Arc;

use berth_store::{ServiceRecord, Store};
use berth_types::ServiceId;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::app::to_view;
use crate::error::ApiError;

/// More changed services than this at once: read everything instead.
const REFRESH_SOME: usize = 256;

#[derive(Default)]
pub struct ListCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The store's change version the entries reflect; `None` before the first load.
    version: Option<u64>,
    entries: HashMap<ServiceId, Entry>,
}

struct Entry {
    team: i64,
    deleted: bool,
    order: (OffsetDateTime, ServiceId),
    json: String,
}

impl Entry {
    fn of(r: ServiceRecord) -> Self {
        let svc = &r.service;
        let (team, deleted, order) = (
            svc.spec.team_id,
            svc.deleted_at.is_some(),
            (svc.created_at, svc.id),
        );
        let mut view = to_view(r.service, r.status, Vec::new());
        view.set_backups(r.backups);
        Self {
            team,
            deleted,
            order,
            json: serde_json::to_string(&view).expect("views serialize to JSON"),
        }
    }
}

impl ListCache {
    /// The JSON array of the services of `team` (all when `None`), oldest first; soft-deleted
    /// ones only with `include_deleted`. Lists carry no `recentEvents` (see docs/api.md).
    pub async fn list_json(
        &self,
        store: &Arc<dyn Store>,
        team: Option<i64>,
        include_deleted: bool,
    ) -> Result<String, ApiError> {
        let t0 = std::time::Instant::now();
        let mut inner = self.inner.lock().await;
        let waited = t0.elapsed();
        let (now, changed) = match inner.version {
            Some(v) => store.services_changed_since(v),
            None => (store.services_changed_since(u64::MAX).0, None),
        };
        let count = changed.as_ref().map_or(usize::MAX, Vec::len);
        match changed {
            Some(ids) if ids.len() <= REFRESH_SOME => {
                // Gone ones are missing from the answer: drop them all, put back what is there.
                for id in &ids {
                    inner.entries.remove(id);
                }
                for r in store.service_records(&ids, 0).await? {
                    inner.entries.insert(r.service.id, Entry::of(r));
                }
            }
            _ => {
                inner.entries = store
                    .service_list_full(None, true, 0)
                    .await?
                    .into_iter()
                    .map(|r| (r.service.id, Entry::of(r)))
                    .collect();
            }
        }
        inner.version = Some(now);
        let refreshed = t0.elapsed();
        let mut shown: Vec<&Entry> = inner
            .entries
            .values()
            .filter(|e| team.is_none_or(|t| e.team == t) && (include_deleted || !e.deleted))
            .collect();
        shown.sort_by_key(|e| e.order);
        let mut out =
            String::with_capacity(shown.iter().map(|e| e.json.len() + 1).sum::<usize>() + 2);
        out.push('[');
        for (i, e) in shown.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&e.json);
        }
        out.push(']');
        tracing::debug!(
            waited_us = waited.as_micros() as u64,
            refreshed_us = (refreshed - waited).as_micros() as u64,
            total_us = t0.elapsed().as_micros() as u64,
            changed = count,
            "services listed"
        );
        Ok(out)
    }
}
