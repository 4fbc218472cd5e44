//! The relay's backlog: sealed envelopes kept per topic in SQLite for
//! members that are not online, with its limits enforced on every insert.
//!
//! Per topic: at most `frames` envelopes and `topic_bytes` bytes, none older
//! than `max_age`; in total at most `total_bytes` (past it the oldest
//! envelopes of any topic go first, like a cache: what a relay keeps is a
//! convenience, replicas resync with each other when they meet) and
//! `max_topics` topics. Frame and byte counts are kept in memory (loaded
//! when the file opens), so no limit needs a scan. A sweep
//! ([`Backlog::expire`]) drops old envelopes of topics nobody writes to.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::store::{EnvelopeLog, Kept, Refusal, StoreFuture};
use crate::sync::Topic;

/// Backlog limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BacklogLimits {
    pub frames: u64,
    pub topic_bytes: u64,
    pub total_bytes: u64,
    pub max_topics: usize,
    pub max_age: Duration,
}

#[derive(Debug, Default, Clone, Copy)]
struct TopicUsage {
    frames: u64,
    bytes: u64,
    /// When envelopes of this topic were last checked for age.
    age_checked_ms: u64,
}

/// Why an envelope was not kept.
#[derive(Debug)]
pub(crate) enum StoreError {
    /// The relay keeps as many topics as it takes.
    TooManyTopics,
    /// SQLite refused (disk full, file cap, I/O).
    Sqlite(rusqlite::Error),
}

/// The backlog file and its accounting.
pub(crate) struct Backlog {
    connection: Connection,
    limits: BacklogLimits,
    usage: HashMap<Topic, TopicUsage>,
    total_bytes: u64,
}

/// Rows looked at per trimming step.
const TRIM_STEP: i64 = 64;

impl Backlog {
    /// Opens (or creates) the backlog; `max_file_bytes` caps the file
    /// (SQLite's `max_page_count`).
    pub fn open(
        path: Option<&Path>,
        max_file_bytes: Option<u64>,
        limits: BacklogLimits,
    ) -> rusqlite::Result<Self> {
        let connection = match path {
            Some(path) => Connection::open(path)?,
            None => Connection::open_in_memory()?,
        };
        if let Some(bytes) = max_file_bytes {
            let page_size: i64 = connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
            let pages = (bytes / page_size.max(512) as u64).max(1);
            connection.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
        }
        connection.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS backlog (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 topic BLOB NOT NULL,
                 envelope BLOB NOT NULL,
                 stored_at INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS backlog_topic ON backlog (topic, seq);",
        )?;
        let mut usage: HashMap<Topic, TopicUsage> = HashMap::new();
        let mut total_bytes = 0;
        {
            let mut statement = connection.prepare(
                "SELECT topic, count(*), coalesce(sum(length(envelope)), 0) FROM backlog GROUP BY topic",
            )?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (topic, frames, bytes) = row?;
                let Ok(topic) = Topic::try_from(topic.as_slice()) else {
                    continue;
                };
                usage.insert(
                    topic,
                    TopicUsage {
                        frames: frames as u64,
                        bytes: bytes as u64,
                        age_checked_ms: 0,
                    },
                );
                total_bytes += bytes as u64;
            }
        }
        Ok(Self {
            connection,
            limits,
            usage,
            total_bytes,
        })
    }

    /// Topics with envelopes kept.
    pub fn topics(&self) -> usize {
        self.usage.len()
    }

    /// Whether `topic` has envelopes kept.
    pub fn has_topic(&self, topic: &Topic) -> bool {
        self.usage.contains_key(topic)
    }

    /// Bytes of envelopes kept, in total.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Keeps `envelope` for `topic` at `now_ms`, then trims the topic (and
    /// the whole backlog) back within the limits; the envelope's sequence.
    pub fn store(
        &mut self,
        topic: &Topic,
        envelope: &[u8],
        now_ms: u64,
        other_topics: usize,
    ) -> Result<u64, StoreError> {
        if !self.usage.contains_key(topic)
            && self.usage.len().saturating_add(other_topics) >= self.limits.max_topics
        {
            return Err(StoreError::TooManyTopics);
        }
        self.connection
            .execute(
                "INSERT INTO backlog (topic, envelope, stored_at) VALUES (?1, ?2, ?3)",
                params![&topic[..], envelope, now_ms as i64],
            )
            .map_err(StoreError::Sqlite)?;
        let sequence = self.connection.last_insert_rowid() as u64;
        let usage = self.usage.entry(*topic).or_default();
        usage.frames += 1;
        usage.bytes += envelope.len() as u64;
        // Age is checked at most once a second per topic (and by the sweep).
        let age_check = now_ms.saturating_sub(usage.age_checked_ms) >= 1_000;
        if age_check {
            usage.age_checked_ms = now_ms;
        }
        self.total_bytes += envelope.len() as u64;
        // Trimming failures are logged, never fatal: the envelope is kept.
        if age_check || self.over_topic_limits(topic) {
            if let Err(error) = self.trim_topic(topic, now_ms) {
                tracing::warn!(%error, "trimming a relay backlog topic failed");
            }
        }
        if let Err(error) = self.trim_total() {
            tracing::warn!(%error, "trimming the relay backlog failed");
        }
        Ok(sequence)
    }

    fn forget(&mut self, topic: &Topic, bytes: u64) {
        if let Some(usage) = self.usage.get_mut(topic) {
            usage.frames = usage.frames.saturating_sub(1);
            usage.bytes = usage.bytes.saturating_sub(bytes);
            if usage.frames == 0 {
                self.usage.remove(topic);
            }
        }
        self.total_bytes = self.total_bytes.saturating_sub(bytes);
    }

    fn over_topic_limits(&self, topic: &Topic) -> bool {
        self.usage.get(topic).is_some_and(|usage| {
            usage.frames > self.limits.frames || usage.bytes > self.limits.topic_bytes
        })
    }

    /// Drops the oldest envelopes of `topic` while it is over its frame or
    /// byte limit, and those older than the age limit.
    pub fn trim_topic(&mut self, topic: &Topic, now_ms: u64) -> rusqlite::Result<()> {
        let cutoff = now_ms.saturating_sub(self.limits.max_age.as_millis() as u64) as i64;
        loop {
            let oldest: Vec<(i64, i64, i64)> = {
                let mut statement = self.connection.prepare_cached(
                    "SELECT seq, stored_at, length(envelope) FROM backlog
                     WHERE topic = ?1 ORDER BY seq LIMIT ?2",
                )?;
                let rows = statement.query_map(params![&topic[..], TRIM_STEP], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut dropped = 0;
            for (seq, stored_at, bytes) in &oldest {
                if !(self.over_topic_limits(topic) || *stored_at < cutoff) {
                    break;
                }
                self.connection
                    .prepare_cached("DELETE FROM backlog WHERE seq = ?1")?
                    .execute([seq])?;
                self.forget(topic, *bytes as u64);
                dropped += 1;
            }
            if dropped < TRIM_STEP as usize || oldest.len() < TRIM_STEP as usize {
                return Ok(());
            }
        }
    }

    /// Drops the oldest envelopes of any topic while the backlog is over its
    /// total byte quota.
    fn trim_total(&mut self) -> rusqlite::Result<()> {
        while self.total_bytes > self.limits.total_bytes {
            let oldest: Vec<(i64, Vec<u8>, i64)> = {
                let mut statement = self.connection.prepare_cached(
                    "SELECT seq, topic, length(envelope) FROM backlog ORDER BY seq LIMIT ?1",
                )?;
                let rows = statement.query_map([TRIM_STEP], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            if oldest.is_empty() {
                self.total_bytes = 0;
                return Ok(());
            }
            for (seq, topic, bytes) in oldest {
                if self.total_bytes <= self.limits.total_bytes {
                    break;
                }
                self.connection
                    .prepare_cached("DELETE FROM backlog WHERE seq = ?1")?
                    .execute([seq])?;
                match Topic::try_from(topic.as_slice()) {
                    Ok(topic) => self.forget(&topic, bytes as u64),
                    Err(_) => self.total_bytes = self.total_bytes.saturating_sub(bytes as u64),
                }
            }
        }
        Ok(())
    }

    /// Topics that may hold envelopes past the age limit (all of them; the
    /// sweep trims each in its own short lock).
    pub fn topic_list(&self) -> Vec<Topic> {
        self.usage.keys().copied().collect()
    }

    /// The newest sequence kept for `topic` (0: none).
    pub fn head(&self, topic: &Topic) -> u64 {
        if !self.usage.contains_key(topic) {
            return 0;
        }
        self.connection
            .query_row(
                "SELECT max(seq) FROM backlog WHERE topic = ?1",
                [&topic[..]],
                |row| row.get::<_, Option<i64>>(0),
            )
            .optional()
            .ok()
            .flatten()
            .flatten()
            .unwrap_or(0) as u64
    }

    /// Envelopes of `topic` after `after` up to `head`, in order, about
    /// `max_bytes` at most (always at least one when any is left).
    pub fn after(
        &self,
        topic: &Topic,
        after: u64,
        head: u64,
        max_bytes: usize,
    ) -> Vec<(u64, Vec<u8>)> {
        let mut batch = Vec::new();
        let Ok(mut statement) = self.connection.prepare_cached(
            "SELECT seq, envelope FROM backlog WHERE topic = ?1 AND seq > ?2 AND seq <= ?3
             ORDER BY seq LIMIT 256",
        ) else {
            return batch;
        };
        let Ok(mut rows) = statement.query(params![
            &topic[..],
            after.min(i64::MAX as u64) as i64,
            head.min(i64::MAX as u64) as i64
        ]) else {
            return batch;
        };
        let mut bytes = 0usize;
        while let Ok(Some(row)) = rows.next() {
            let (Ok(seq), Ok(envelope)) = (row.get::<_, i64>(0), row.get::<_, Vec<u8>>(1)) else {
                break;
            };
            bytes = bytes.saturating_add(envelope.len());
            batch.push((seq as u64, envelope));
            if bytes >= max_bytes {
                break;
            }
        }
        batch
    }
}

/// The single-node relay's [`EnvelopeLog`]: a [`Backlog`] file, each call
/// on tokio's blocking pool.
pub(crate) struct SqliteLog {
    backlog: std::sync::Arc<std::sync::Mutex<Backlog>>,
}

impl SqliteLog {
    pub fn new(backlog: Backlog) -> Self {
        Self {
            backlog: std::sync::Arc::new(std::sync::Mutex::new(backlog)),
        }
    }

    /// Runs `work` on the backlog off the async threads.
    fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Backlog) -> T + Send + 'static,
    ) -> StoreFuture<'_, Result<T, Refusal>> {
        let backlog = self.backlog.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut backlog = backlog.lock().unwrap_or_else(|e| e.into_inner());
                work(&mut backlog)
            })
            .await
            .map_err(|e| Refusal::Unavailable(format!("the backlog task failed: {e}")))
        })
    }
}

impl EnvelopeLog for SqliteLog {
    fn store(
        &self,
        topic: Topic,
        _from: u64,
        envelope: Vec<u8>,
        member_topics: usize,
    ) -> StoreFuture<'_, Result<u64, Refusal>> {
        let stored = self.with(move |backlog| {
            backlog.store(&topic, &envelope, crate::platform::now_ms(), member_topics)
        });
        Box::pin(async move {
            match stored.await? {
                Ok(sequence) => Ok(sequence),
                Err(StoreError::TooManyTopics) => Err(Refusal::TooManyTopics),
                Err(StoreError::Sqlite(error)) => Err(Refusal::Unavailable(error.to_string())),
            }
        })
    }

    fn head(&self, topic: Topic) -> StoreFuture<'_, Result<u64, Refusal>> {
        self.with(move |backlog| backlog.head(&topic))
    }

    fn after(
        &self,
        topic: Topic,
        after: u64,
        head: u64,
        max_bytes: usize,
    ) -> StoreFuture<'_, Result<Vec<Kept>, Refusal>> {
        self.with(move |backlog| backlog.after(&topic, after, head, max_bytes))
    }

    fn expire(&self) -> StoreFuture<'_, ()> {
        let backlog = self.backlog.clone();
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || {
                // Each topic in its own short lock.
                let topics = backlog
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .topic_list();
                for topic in topics {
                    let mut backlog = backlog.lock().unwrap_or_else(|e| e.into_inner());
                    if let Err(error) = backlog.trim_topic(&topic, crate::platform::now_ms()) {
                        tracing::warn!(%error, "expiring relay backlog envelopes failed");
                    }
                }
            })
            .await;
        })
    }

    fn usage(&self) -> (usize, u64) {
        let backlog = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
        (backlog.topics(), backlog.total_bytes())
    }

    fn holds(&self, topic: &Topic) -> bool {
        self.backlog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .has_topic(topic)
    }
}
