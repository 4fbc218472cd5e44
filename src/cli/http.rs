//! The HTTP API of `pluresdb serve` (axum).
//!
//! Errors are JSON: `{"error": {"code": "InvalidInputError", "message":
//! "..."}}` with the status codes listed in `api/openapi.json` (served at
//! `/api/openapi.json`). Writes need `Authorization: Bearer <token>` when
//! the server has a token.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::crdt::Document;
use crate::error::{Error, ErrorName};
use crate::storage::SqliteStorage;
use crate::{Database, ListOptions, Query, SearchQuery, SearchRequest, SyncEvent};

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("../../api/openapi.json");

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The served database.
    pub db: Database<SqliteStorage>,
    /// The bearer token writes need, if any.
    pub token: Option<String>,
}

/// An API error: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidInputError", message)
    }

    fn not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            format!("no record `{id}`"),
        )
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let name = error.name();
        let status = match name {
            ErrorName::InvalidInput | ErrorName::DimensionMismatch | ErrorName::Embedder => {
                StatusCode::BAD_REQUEST
            }
            ErrorName::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorName::QuotaExceeded => StatusCode::INSUFFICIENT_STORAGE,
            ErrorName::Closed => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, name.as_str(), error.to_string())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(
                status,
                "TooLargeError",
                "the request body is larger than the server accepts",
            )
        } else {
            Self::new(status, "InvalidInputError", rejection.body_text())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn json_body(body: Result<Bytes, BytesRejection>) -> ApiResult<Value> {
    let body = body?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

fn authorize(state: &ApiState, headers: &HeaderMap) -> ApiResult<()> {
    let Some(token) = &state.token else {
        return Ok(());
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare without an early exit, so timing does not reveal a prefix.
    let matches = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if matches {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UnauthorizedError",
            "this server needs `Authorization: Bearer <token>` for writes",
        ))
    }
}

/// The API routes (`/health`, `/api/...`).
pub fn router(state: ApiState, max_body: usize) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/api/openapi.json", get(openapi))
        .route("/api/records", get(list))
        .route(
            "/api/records/{id}",
            get(get_record).put(put_record).delete(delete_record),
        )
        .route("/api/query", post(query))
        .route("/api/search", post(search))
        .route("/api/status", get(status))
        .route("/api/events", get(events))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn openapi() -> Response {
    ([("content-type", "application/json")], OPENAPI).into_response()
}

#[derive(Debug, Deserialize)]
struct ListParams {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn record_json(id: &str, data: &Document) -> Value {
    json!({ "id": id, "data": data.to_value() })
}

async fn list(
    State(state): State<ApiState>,
    params: Result<QueryParams<ListParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let QueryParams(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let page = state.db.list(&ListOptions {
        prefix: params.prefix,
        limit: params.limit,
        cursor: params.cursor,
    })?;
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|(id, d)| record_json(id, d))
        .collect();
    Ok(Json(
        json!({ "items": items, "nextCursor": page.next_cursor }),
    ))
}

async fn get_record(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    match state.db.get_document(&id)? {
        Some(data) => Ok(Json(record_json(&id, &data))),
        None => Err(ApiError::not_found(&id)),
    }
}

async fn put_record(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    authorize(&state, &headers)?;
    let value = json_body(body)?;
    let document = Document::from_value(&value).map_err(Error::from)?;
    state.db.put_document(&id, document, None).await?;
    Ok(Json(json!({ "id": id })))
}

async fn delete_record(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    authorize(&state, &headers)?;
    if state.db.delete(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(&id))
    }
}

async fn query(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let query = Query::from_json(&json_body(body)?).map_err(Error::from)?;
    let hits = state.db.query(&query)?;
    Ok(Json(Value::Array(
        hits.iter().map(|(id, d)| record_json(id, d)).collect(),
    )))
}

async fn search(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let body = json_body(body)?;
    let query = match (body.get("vector"), body.get("text")) {
        (Some(Value::Array(items)), None) => SearchQuery::Vector(
            items
                .iter()
                .map(|v| v.as_f64().map(|n| n as f32))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| ApiError::bad_request("`vector` must be an array of numbers"))?,
        ),
        (None, Some(Value::String(text))) => SearchQuery::Text(text.clone()),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `vector` (numbers) or `text`",
            ))
        }
    };
    let k = match body.get("k") {
        None => 10,
        Some(k) => k
            .as_u64()
            .filter(|k| *k >= 1)
            .ok_or_else(|| ApiError::bad_request("`k` must be a positive integer"))?
            as usize,
    };
    let min_score = match body.get("minScore") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .ok_or_else(|| ApiError::bad_request("`minScore` must be a number"))?
                as f32,
        ),
    };
    let filter = match body.get("filter") {
        None | Some(Value::Null) => None,
        Some(filter) => Some(Query::from_json(filter).map_err(Error::from)?),
    };
    let hits = state
        .db
        .search(&SearchRequest {
            query,
            k,
            min_score,
            filter,
            ef: None,
        })
        .await?;
    Ok(Json(Value::Array(
        hits.iter()
            .map(|h| json!({ "id": h.id, "score": h.score, "data": h.data.to_value() }))
            .collect(),
    )))
}

async fn status(State(state): State<ApiState>) -> ApiResult<Json<Value>> {
    let stats = state.db.stats()?;
    let index = state.db.index_stats();
    Ok(Json(json!({
        "records": stats.live,
        "tombstones": stats.tombstones,
        "conflicts": stats.conflicted,
        "actor": state.db.actor().to_string(),
        "actors": state.db.version_vector().len(),
        "index": { "dimension": index.dimension, "vectors": index.vectors, "segments": index.segments },
        "sync": state.db.sync_identity().is_some(),
    })))
}

async fn events(
    State(state): State<ApiState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = state.db.subscribe().map(|event| {
        let (kind, id) = match &event {
            SyncEvent::Upsert { id } => ("upsert", id),
            SyncEvent::Delete { id } => ("delete", id),
            SyncEvent::PeerConnected { peer } => ("peer-connected", peer),
            SyncEvent::PeerDisconnected { peer } => ("peer-disconnected", peer),
        };
        Ok(Event::default()
            .event(kind)
            .data(json!({ "kind": kind, "id": id }).to_string()))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
