//! Berth's HTTP API (CONTRACTS.md §1). Handlers are thin: parse, call the app layer
//! ([`app::App`]), convert. Errors become HTTP in one place ([`error::ApiError`]); a rejected body
//! answers with the same error shape as everything else. The OpenAPI document is generated from
//! these handlers ([`openapi`]) and checked into `docs/openapi.json`.

pub mod app;
pub mod auth;
pub mod error;
pub mod list_cache;
pub mod openapi;

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_types::api::{
    CreateServiceRequest, CreatedServiceView, EnvView, ManagedServiceView, PatchServiceRequest,
};
use berth_types::{Event, ProviderDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub use app::App;
pub use auth::Tokens;
use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub app: Arc<App>,
    pub tokens: Tokens,
}

/// The whole router: the authenticated API, plus `/health` and `/api/openapi.json`, which are open.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route(
            "/api/managed-services",
            get(services_list).post(services_create),
        )
        .route(
            "/api/managed-services/providers",
            get(providers_list)
                .post(providers_create)
                .put(providers_upsert),
        )
        .route(
            "/api/managed-services/providers/{name}/{version}",
            axum::routing::patch(providers_patch).delete(providers_delete),
        )
        .route(
            "/api/managed-services/{id}",
            get(services_get)
                .patch(services_patch)
                .delete(services_delete),
        )
        .route("/api/managed-services/{id}/events", get(services_events))
        .route("/api/managed-services/{id}/logs", get(services_logs))
        .route("/api/managed-services/{id}/env", post(services_env))
        .route("/api/managed-services/{id}/backups", post(services_backup))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_bearer,
        ));
    Router::new()
        .merge(api)
        .route("/api/openapi.json", get(openapi_json))
        .route("/health", get(|| async { "ok" }))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(state)
}

/// A JSON body whose rejection answers with the API's error shape.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        use axum::extract::rejection::JsonRejection;
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::invalid("body", e.body_text())),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// Query parameters whose rejection answers with the API's error shape.
pub struct Q<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Q(q.0))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    /// Only this team's services.
    pub team: Option<i64>,
    /// Also soft-deleted services still in retention.
    #[serde(default)]
    pub include_deleted: bool,
}

/// List managed services.
#[utoipa::path(get, path = "/api/managed-services", params(ListQuery),
    responses((status = 200, body = Vec<ManagedServiceView>), (status = 401, body = berth_types::api::ErrorBody)),
    security(("bearer" = [])), tag = "managed-services")]
async fn services_list(
    State(s): State<AppState>,
    Q(q): Q<ListQuery>,
) -> Result<Response, ApiError> {
    let json = s.app.service_list_json(q.team, q.include_deleted).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response())
}

/// Create a managed service. Answers at once in state `creating`; the generated secrets are in
/// this answer only.
#[utoipa::path(post, path = "/api/managed-services", request_body = CreateServiceRequest,
    responses((status = 201, body = CreatedServiceView), (status = 400, body = berth_types::api::ErrorBody),
        (status = 409, body = berth_types::api::ErrorBody), (status = 422, body = berth_types::api::ErrorBody)),
    security(("bearer" = [])), tag = "managed-services")]
async fn services_create(
    State(s): State<AppState>,
    Body(req): Body<CreateServiceRequest>,
) -> Result<Response, ApiError> {
    let created = s.app.service_create(req).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// One managed service, with its status and recent events.
#[utoipa::path(get, path = "/api/managed-services/{id}", params(("id" = String, Path)),
    responses((status = 200, body = ManagedServiceView), (status = 404, body = berth_types::api::ErrorBody)),
    security(("bearer" = [])), tag = "managed-services")]
async fn services_get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ManagedServiceView>, ApiError> {
    Ok(Json(s.app.service_get(&id).await?))
}

/// Change any subset of name, plan, config, secrets, pause, backups.
#[utoipa::path(patch, path = "/api/managed-services/{id}", params(("id" = String, Path)), request_body = PatchServiceRequest,
    responses((status = 200, body = ManagedServiceView), (status = 404, body = berth_types::api::ErrorBody),
        (status = 409, body = berth_types::api::ErrorBody), (status = 422, body = berth_types::api::ErrorBody)),
    security(("bearer" = [])), tag = "managed-services")]
async fn services_patch(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(req): Body<PatchServiceRequest>,
) -> Result<Json<ManagedServiceView>, ApiError> {
    Ok(Json(s.app.service_patch(&id, req).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct DeleteQuery {
    /// Delete at once without the final backup (backups are turned off). Also ends a delete
    /// whose final backup keeps failing.
    #[serde(default)]
    pub skip_final_backup: bool,
}

/// Delete a managed service. Its credentials are destroyed at once. Without backups the instance
/// and its data go next and the record is purged; with backups a final backup is taken and
/// confirmed first, and the record and its backups are kept for `deleteRetentionDays`.
#[utoipa::path(delete, path = "/api/managed-services/{id}", params(("id" = String, Path), DeleteQuery),
    responses((status = 202, body = ManagedServiceView), (status = 404, body = berth_types::api::ErrorBody)),
    security(("bearer" = [])), tag = "managed-services")]
async fn services_delete(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<DeleteQuery>,
) -> Result<Response, ApiError> {
    let view = s.app.service_delete(&id, q.skip_final_backup).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// Only events older than this cursor (`nextBefore` of the previous page).
    pub before: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventsPage {
    pub events: Vec<Event>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<i64>,
}

/// The service's events log, newest first, paged.
#[utoipa::path(get, path = "/api/managed-services/{id}/events", params(("id" = String, Path), EventsQuery),
    responses((status = 200, body = EventsPage), (status = 404, body = berth_types::api::ErrorBody),
        (status = 422, body = berth_types::api::ErrorBody)),
    security(("bearer" = [])), tag = "managed-services")]
async fn services_events(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<EventsQuery>,
) -> Result<Json<EventsPage>, ApiError> {
    let limit = in_range(q.limit.map(u64::from), 50, "limit", 1, 500)?;
    let (events, next_before) = s.app.service_events(&id, limit as u32, q.before).await?;
    Ok(Json(EventsPage {
        events,
        next_before,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// How many of the last lines, 1 to 5000 (default 200).
    #[param(minimum = 1, maximum = 5000)]
    pub lines: Option<u64>,
}

/// The tail of the instance's server log, as plain text.
#[utoipa::path(get, path = "/api/managed-services/{id}/logs", params(("id" = String, Path), LogsQuery),
    responses((status = 200, body = String, content_type = "text/plain"), (status = 404, body = berth_types::api::ErrorBody),
        (status = 422, body = berth_types::api::ErrorBody), (status = 501, body = berth_types::api::ErrorBody)),
    security(("bearer" = [])), tag = "managed-services")]
async fn services_logs(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<LogsQuery>,
) -> Result<String, ApiError> {
    let lines = in_range(q.lines, 200, "lines", 1, 5000)?;
    s.app.service_logs(&id, lines as usize).await
}

/// A query number, or its default; outside `lo..=hi` a 422 on the parameter (never clamped
/// silently: the caller would get something else than asked for).
fn in_range(v: Option<u64>, default: u64, name: &str, lo: u64, hi: u64) -> Result<u64, ApiError> {
    let v = v.unwrap_or(default);
    if !(lo..=hi).contains(&v) {
        return Err(ApiError::invalid(
            name,
            format!("must be between {lo} and {hi}"),
        ));
    }
    Ok(v)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EnvQuery {
    /// Variable name prefix; `DEFAULT` (the default) also yields the bare names.
    #[param(pattern = "^[A-Za-z0-9_]+$")]
    pub prefix: Option<String>,
}

/// The environment variables an application uses to reach the service (CONTRACTS.md §5).
/// Reveals the credentials, so it is a POST and is recorded in the events log.
#[utoipa::path(post, path = "/api/managed-services/{id}/env", params(("id" = String, Path), EnvQuery),
    responses((status = 200, body = EnvView), (status = 404, body = berth_types::api::ErrorBody),
        (status = 409, body = berth_types::api::ErrorBody), (status = 422, body = berth_types::api::ErrorBody)),
    security(("bearer" = [])), tag = "managed-services")]
async fn services_env(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<EnvQuery>,
) -> Result<Json<EnvView>, ApiError> {
    let vars = s.app.service_env(&id, q.prefix.as_deref()).await?;
    Ok(Json(EnvView {
        variables: berth_types::api::indexmap_like::Pairs(vars),
    }))
}

/// Take a backup now; the answer is the scheduled entry, which `initiatedAt` and `confirmedAt`
/// fill as the provider's backend starts and confirms it (see the resource's `backups.entries`).
#[utoipa::path(post, path = "/api/managed-services/{id}/backups", params(("id" = String, Path)),
    responses((status = 202, body = berth_types::BackupEntry), (status = 404, body = berth_types::api::ErrorBody),
        (status = 409, body = berth_types::api::ErrorBody), (status = 422, body = berth_types::api::ErrorBody)),
    security(("bearer" = [])), tag = "managed-services")]
async fn services_backup(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let entry = s.app.service_backup(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(entry)).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct ProvidersQuery {
    /// Include the providers scoped to this team.
    pub team_id: Option<i64>,
}

/// The catalog: every provider this team may use.
#[utoipa::path(get, path = "/api/managed-services/providers", params(ProvidersQuery),
    responses((status = 200, body = Vec<ProviderDefinition>)),
    security(("bearer" = [])), tag = "providers")]
async fn providers_list(
    State(s): State<AppState>,
    Q(q): Q<ProvidersQuery>,
) -> Json<Vec<ProviderDefinition>> {
    Json(s.app.providers(q.team_id))
}

/// A provider as registered, with what Berth noticed (an unreachable backend).
#[derive(Debug, Serialize, ToSchema)]
pub struct RegisteredProvider {
    #[serde(flatten)]
    pub provider: ProviderDefinition,
    pub warnings: Vec<String>,
}

fn registered(mut def: ProviderDefinition, warnings: Vec<String>) -> RegisteredProvider {
    for k in ["api", "rest"] {
        if let Some(section) = def
            .backend
            .get_mut(k)
            .and_then(serde_json::Value::as_object_mut)
        {
            section.remove("secret");
        }
    }
    RegisteredProvider {
        provider: def,
        warnings,
    }
}

/// Register a provider (CONTRACTS.md §3). 409 when it exists.
#[utoipa::path(post, path = "/api/managed-services/providers", request_body = ProviderDefinition,
    responses((status = 201, body = RegisteredProvider), (status = 409, body = berth_types::api::ErrorBody),
        (status = 422, body = berth_types::api::ErrorBody)),
    security(("bearer" = [])), tag = "providers")]
async fn providers_create(
    State(s): State<AppState>,
    Body(def): Body<ProviderDefinition>,
) -> Result<Response, ApiError> {
    let (_, warnings) = s.app.provider_register(def.clone(), false).await?;
    Ok((StatusCode::CREATED, Json(registered(def, warnings))).into_response())
}

/// Register or replace a provider.
#[utoipa::path(put, path = "/api/managed-services/providers", request_body = ProviderDefinition,
    responses((status = 200, body = RegisteredProvider), (status = 201, body = RegisteredProvider),
        (status = 409, body = berth_types::api::ErrorBody), (status = 422, body = berth_types::api::ErrorBody)),
    security(("bearer" = [])), tag = "providers")]
async fn providers_upsert(
    State(s): State<AppState>,
    Body(def): Body<ProviderDefinition>,
) -> Result<Response, ApiError> {
    let (new, warnings) = s.app.provider_register(def.clone(), true).await?;
    let code = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(registered(def, warnings))).into_response())
}

/// Change a registered provider with a JSON merge patch.
#[utoipa::path(patch, path = "/api/managed-services/providers/{name}/{version}",
    params(("name" = String, Path), ("version" = String, Path)), request_body = Object,
    responses((status = 200, body = RegisteredProvider), (status = 404, body = berth_types::api::ErrorBody),
        (status = 409, body = berth_types::api::ErrorBody), (status = 422, body = berth_types::api::ErrorBody)),
    security(("bearer" = [])), tag = "providers")]
async fn providers_patch(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    Body(patch): Body<serde_json::Value>,
) -> Result<Json<RegisteredProvider>, ApiError> {
    let (def, warnings) = s.app.provider_patch(&name, &version, patch).await?;
    Ok(Json(registered(def, warnings)))
}

/// Remove a registered provider; refused while services use it.
#[utoipa::path(delete, path = "/api/managed-services/providers/{name}/{version}",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 204), (status = 404, body = berth_types::api::ErrorBody), (status = 409, body = berth_types::api::ErrorBody)),
    security(("bearer" = [])), tag = "providers")]
async fn providers_delete(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    s.app.provider_delete(&name, &version).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn openapi_json() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi::document_json(),
    )
        .into_response()
}
