//! `Idempotency-Key` for creating POSTs: the first successful answer for a (user, endpoint, key)
//! triple is stored for 24 hours and replayed (same status, same body) to a repeated request,
//! which then records no event. The key is scoped to the endpoint, so one key sent to
//! `POST /tasks` and then to `POST /projects` creates both. The key is reserved before the
//! command runs, so two concurrent requests with one key cannot both create; the second waits
//! briefly for the first answer or gets 409. A reservation left behind by a request that never
//! finished (a crash) lapses after a few minutes.

use std::future::Future;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::Value;
use sparc_projections::format_timestamp;
use sparc_store::{Database, on_backend};
use uuid::Uuid;

use crate::error::ApiError;

/// How long a stored answer is replayed.
const RETENTION_HOURS: i64 = 24;
/// The longest accepted key.
const MAX_KEY_LEN: usize = 255;
/// How long a reservation without an answer holds its key: far longer than any create takes.
const ABANDONED_AFTER_MINUTES: i64 = 5;

/// The stored answers.
#[derive(Clone)]
pub struct IdempotencyStore {
    db: Database,
}

enum Reservation {
    Reserved,
    Answered(StatusCode, Value),
    Busy,
}

impl IdempotencyStore {
    /// A store over the `idempotency_keys` table of `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Runs `create` once per (user, `scope`, key), where `scope` names the endpoint (such as
    /// `"POST /api/v1/tasks"`): without a key it just runs; with one, a repeated request gets
    /// the first answer back. Failed attempts are not stored, so a client may retry.
    pub async fn run<F, Fut>(
        &self,
        user: Uuid,
        scope: &str,
        key: Option<&str>,
        create: F,
    ) -> Result<Response, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(StatusCode, Value), ApiError>>,
    {
        let Some(key) = key else {
            let (status, body) = create().await?;
            return Ok(answer(status, body));
        };
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} characters"
            )));
        }
        let user = user.to_string();
        let key = format!("{scope} {key}");
        let key = key.as_str();
        let mut waited = Duration::ZERO;
        loop {
            match self.reserve(&user, key).await.map_err(ApiError::internal)? {
                Reservation::Reserved => break,
                Reservation::Answered(status, body) => return Ok(answer(status, body)),
                Reservation::Busy if waited < Duration::from_secs(5) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    waited += Duration::from_millis(50);
                }
                Reservation::Busy => {
                    return Err(ApiError::Conflict(
                        "A request with this Idempotency-Key is in progress".to_owned(),
                    ));
                }
            }
        }
        match create().await {
            Ok((status, body)) => {
                self.store(&user, key, status, &body)
                    .await
                    .map_err(ApiError::internal)?;
                Ok(answer(status, body))
            }
            Err(error) => {
                self.release(&user, key).await.map_err(ApiError::internal)?;
                Err(error)
            }
        }
    }

    async fn reserve(&self, user: &str, key: &str) -> Result<Reservation, sqlx::Error> {
        let now = Utc::now();
        let expired = format_timestamp(now - chrono::Duration::hours(RETENTION_HOURS));
        let abandoned = format_timestamp(now - chrono::Duration::minutes(ABANDONED_AFTER_MINUTES));
        let now = format_timestamp(now);
        let existing: Option<Option<(i32, Option<String>)>> = on_backend!(Database &self.db, pool => {
            sqlx::query(
                "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 \
                 AND (created_at < $3 OR (status = 0 AND created_at < $4))",
            )
            .bind(user)
            .bind(key)
            .bind(&expired)
            .bind(&abandoned)
            .execute(pool)
            .await?;
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (user_id, key, status, body, created_at) VALUES ($1, $2, 0, NULL, $3) \
                 ON CONFLICT (user_id, key) DO NOTHING",
            )
            .bind(user)
            .bind(key)
            .bind(&now)
            .execute(pool)
            .await?
            .rows_affected();
            if inserted == 1 {
                None
            } else {
                Some(
                    sqlx::query_as("SELECT status, body FROM idempotency_keys WHERE user_id = $1 AND key = $2")
                        .bind(user)
                        .bind(key)
                        .fetch_optional(pool)
                        .await?,
                )
            }
        });
        Ok(match existing {
            None => Reservation::Reserved,
            // The holder gave up between our insert and our read: try to reserve again.
            Some(None) | Some(Some((0, _))) | Some(Some((_, None))) => Reservation::Busy,
            Some(Some((status, Some(body)))) => {
                let status = u16::try_from(status)
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .unwrap_or(StatusCode::OK);
                Reservation::Answered(status, serde_json::from_str(&body).unwrap_or(Value::Null))
            }
        })
    }

    async fn store(
        &self,
        user: &str,
        key: &str,
        status: StatusCode,
        body: &Value,
    ) -> Result<(), sqlx::Error> {
        let body = body.to_string();
        on_backend!(Database &self.db, pool => {
            sqlx::query("UPDATE idempotency_keys SET status = $3, body = $4 WHERE user_id = $1 AND key = $2")
                .bind(user)
                .bind(key)
                .bind(i32::from(status.as_u16()))
                .bind(&body)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    async fn release(&self, user: &str, key: &str) -> Result<(), sqlx::Error> {
        on_backend!(Database &self.db, pool => {
            sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND status = 0")
                .bind(user)
                .bind(key)
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}

/// The `Idempotency-Key` header of a request, if it has a readable one.
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The answer for a created resource: its JSON, with `ETag` when it carries a version.
pub fn answer(status: StatusCode, body: Value) -> Response {
    let etag = body
        .get("version")
        .and_then(Value::as_i64)
        .map(|v| format!("\"{v}\""));
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(etag) = etag.and_then(|e| e.parse().ok()) {
        response
            .headers_mut()
            .insert(axum::http::header::ETAG, etag);
    }
    response
}
