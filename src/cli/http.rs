//! The HTTP API of `pluresdb serve` (axum): its routes, the token check
//! and the limits of each request.
//!
//! Errors are JSON: `{"error": {"code": "InvalidInputError", "message":
//! "..."}}` with the status codes listed in `api/openapi.json` (served at
//! `/api/openapi.json`). When the server has a token, every `/api` route
//! but `/api/openapi.json` needs `Authorization: Bearer <token>`;
//! `/api/events` also takes `?token=<token>`, as a browser's `EventSource`
//! cannot set headers. Lists are paged ([`MAX_PAGE`] items at most), every
//! number is range-checked (a 400 otherwise), and each event stream has a
//! bounded queue ([`EVENT_QUEUE`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query as QueryParams, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::channel::mpsc;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::crdt::Document;
use crate::error::{Error, ErrorName};
use crate::index::MAX_SEARCH_BREADTH;
use crate::storage::SqliteStorage;
use crate::{Database, ListOptions, Query, SearchQuery, SearchRequest, SyncEvent};

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("../../api/openapi.json");

/// Items in a page of `GET /api/records` or `POST /api/query` when the
/// request does not say.
pub const DEFAULT_PAGE: usize = 100;
/// The most items a page may ask for.
pub const MAX_PAGE: usize = 1_000;
/// The largest `offset` of `POST /api/query`.
pub const MAX_OFFSET: usize = 1_000_000_000;
/// Events an `/api/events` subscriber may fall behind by before its stream
/// is ended (with a final `lagged` event).
pub const EVENT_QUEUE: usize = 1_024;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The served database.
    pub db: Database<SqliteStorage>,
    /// The bearer token the `/api` routes need, if any.
    pub token: Option<String>,
    /// One permit per open `/api/events` stream.
    pub event_streams: Arc<Semaphore>,
    /// Becomes true when the server shuts down: event streams end.
    pub closing: watch::Receiver<bool>,
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

    /// 403: the request's `Host` or `Origin` is not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "ForbiddenError", message)
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

/// Compares without an early exit, so timing does not reveal a prefix.
fn same_secret(given: &str, token: &str) -> bool {
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[derive(Deserialize)]
struct TokenParam {
    token: Option<String>,
}

/// The token a request carries: `Authorization: Bearer <token>`, or on
/// `/api/events` (`query_allowed`) also `?token=<token>`.
fn given_token(request: &Request, query_allowed: bool) -> Option<String> {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(bearer) = bearer {
        return Some(bearer.to_owned());
    }
    if !query_allowed {
        return None;
    }
    QueryParams::<TokenParam>::try_from_uri(request.uri())
        .ok()
        .and_then(|QueryParams(params)| params.token)
}

/// Middleware on every `/api` route but `/api/openapi.json`: 401 unless the
/// request carries the server's token (when it has one).
async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    let events = request.uri().path() == "/api/events";
    let given = given_token(&request, events).unwrap_or_default();
    if same_secret(&given, token) {
        return next.run(request).await;
    }
    let how = if events {
        "`Authorization: Bearer <token>` or `?token=<token>`"
    } else {
        "`Authorization: Bearer <token>`"
    };
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "UnauthorizedError",
        format!("this server needs {how}"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Gives the bare 408 of the request time limit a JSON body.
pub async fn timeout_as_json(response: Response) -> Response {
    if response.status() == StatusCode::REQUEST_TIMEOUT
        && !response.headers().contains_key(header::CONTENT_TYPE)
    {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "TimeoutError",
            "the request took longer than the server allows",
        )
        .into_response()
    } else {
        response
    }
}

/// The API routes (`/health`, `/api/...`) but `/api/events`, which
/// [`event_router`] serves without a time limit.
pub fn router(state: ApiState, max_body: usize) -> Router {
    let guarded = Router::new()
        .route("/api/records", get(list))
        .route(
            "/api/records/{id}",
            get(get_record).put(put_record).delete(delete_record),
        )
        .route("/api/query", post(query))
        .route("/api/search", post(search))
        .route("/api/status", get(status))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/health", get(health))
        .route("/api/openapi.json", get(openapi))
        .merge(guarded)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// `/api/events`, the server-sent event stream.
pub fn event_router(state: ApiState) -> Router {
    Router::new()
        .route("/api/events", get(events))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// A whole number from `value` in `min..=max` (`default` when absent).
fn bounded(
    value: Option<&Value>,
    name: &str,
    default: usize,
    min: usize,
    max: usize,
) -> ApiResult<usize> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(default);
    };
    value
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "`{name}` must be a whole number, at least {min} and at most {max}"
            ))
        })
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

/// `GET /api/records`: one page in id order. The database copies the page
/// (shared documents) under its lock; the JSON is built after.
async fn list(
    State(state): State<ApiState>,
    params: Result<QueryParams<ListParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let QueryParams(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = bounded(
        params.limit.map(Value::from).as_ref(),
        "limit",
        DEFAULT_PAGE,
        1,
        MAX_PAGE,
    )?;
    let page = state
        .db
        .list(&ListOptions {
            prefix: params.prefix,
            limit: Some(limit),
            cursor: params.cursor,
        })
        .await?;
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
    match state.db.get_document(&id).await? {
        Some(data) => Ok(Json(record_json(&id, &data))),
        None => Err(ApiError::not_found(&id)),
    }
}

async fn put_record(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let value = json_body(body)?;
    let document = Document::from_value(&value).map_err(Error::from)?;
    state.db.put_document(&id, document, None).await?;
    Ok(Json(json!({ "id": id })))
}

async fn delete_record(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if state.db.delete(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(&id))
    }
}

/// `POST /api/query`: the query's results from `offset` on, at most `limit`
/// (default [`DEFAULT_PAGE`], at most [`MAX_PAGE`]) of them. The body stays
/// a JSON array; when more results follow, the `X-Next-Offset` header gives
/// the `offset` of the next page.
async fn query(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let mut body = match json_body(body)? {
        Value::Null => Map::new(),
        Value::Object(object) => object,
        other => Query::from_json(&other)
            .map(|_| Map::new())
            .map_err(Error::from)?,
    };
    let limit = bounded(
        body.remove("limit").as_ref(),
        "limit",
        DEFAULT_PAGE,
        1,
        MAX_PAGE,
    )?;
    let offset = bounded(body.remove("offset").as_ref(), "offset", 0, 0, MAX_OFFSET)?;
    let mut query = Query::from_json(&Value::Object(body)).map_err(Error::from)?;
    // One more than the page tells whether another page follows.
    let wanted = offset
        .checked_add(limit)
        .and_then(|n| n.checked_add(1))
        .ok_or_else(|| ApiError::bad_request("`offset` + `limit` is too large"))?;
    query.limit = Some(wanted);
    let hits = state.db.query(&query).await?;
    let more = hits.len() == wanted;
    let items: Vec<Value> = hits
        .iter()
        .skip(offset)
        .take(limit)
        .map(|(id, d)| record_json(id, d))
        .collect();
    let mut response = Json(Value::Array(items)).into_response();
    if more {
        response
            .headers_mut()
            .insert("x-next-offset", HeaderValue::from(offset + limit));
    }
    Ok(response)
}

/// A JSON number as a finite `f32` (a larger one would become infinite).
fn finite_f32(value: &Value) -> Option<f32> {
    value.as_f64().map(|n| n as f32).filter(|n| n.is_finite())
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
                .map(finite_f32)
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| {
                    ApiError::bad_request("`vector` must be an array of finite 32-bit numbers")
                })?,
        ),
        (None, Some(Value::String(text))) => SearchQuery::Text(text.clone()),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `vector` (numbers) or `text`",
            ))
        }
    };
    let k = bounded(body.get("k"), "k", 10, 1, MAX_SEARCH_BREADTH)?;
    let ef = match body.get("ef") {
        None | Some(Value::Null) => None,
        ef => Some(bounded(ef, "ef", 0, 1, MAX_SEARCH_BREADTH)?),
    };
    let min_score = match body.get("minScore") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            finite_f32(v)
                .ok_or_else(|| ApiError::bad_request("`minScore` must be a finite number"))?,
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
            ef,
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
        "index": { "dimension": index.dimension, "vectors": index.vectors, "segments": index.segments, "graphBytes": index.graph_bytes, "vectorBytes": index.vector_bytes },
        "sync": state.db.sync_identity().is_some(),
    })))
}

fn event_of(event: &SyncEvent) -> Event {
    let (kind, id) = match event {
        SyncEvent::Upsert { id } => ("upsert", id),
        SyncEvent::Delete { id } => ("delete", id),
        SyncEvent::PeerConnected { peer } => ("peer-connected", peer),
        SyncEvent::PeerDisconnected { peer } => ("peer-disconnected", peer),
    };
    Event::default()
        .event(kind)
        .data(json!({ "kind": kind, "id": id }).to_string())
}

/// Resolves once `closing` is true (the server is shutting down).
pub async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

/// One `/api/events` stream: its bounded subscription and its slot under
/// `--max-event-streams`, given back as soon as the stream ends.
struct Subscriber {
    events: mpsc::Receiver<SyncEvent>,
    db: Database<SqliteStorage>,
    closing: watch::Receiver<bool>,
    slot: Option<OwnedSemaphorePermit>,
}

impl Subscriber {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        self.slot.as_ref()?;
        let event = tokio::select! {
            event = self.events.next() => event,
            () = closed(&mut self.closing) => None,
        };
        if let Some(event) = event {
            return Some((Ok(event_of(&event)), self));
        }
        self.slot = None;
        if self.db.is_closed() || *self.closing.borrow() {
            return None;
        }
        // The database dropped this subscriber: it fell more than
        // EVENT_QUEUE events behind. Say so, then end.
        let lagged = Event::default().event("lagged").data(
            json!({ "kind": "lagged", "message": format!("more than {EVENT_QUEUE} events behind; reconnect and re-read") })
                .to_string(),
        );
        Some((Ok(lagged), self))
    }
}

/// `GET /api/events`: server-sent events, one per change. 503 beyond
/// `--max-event-streams` streams.
async fn events(State(state): State<ApiState>) -> ApiResult<Response> {
    let slot = state
        .event_streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UnavailableError",
                "too many open event streams; try again later",
            )
        })?;
    let subscriber = Subscriber {
        events: state.db.subscribe_bounded(EVENT_QUEUE),
        db: state.db.clone(),
        closing: state.closing.clone(),
        slot: Some(slot),
    };
    let stream = futures::stream::unfold(subscriber, Subscriber::next);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
