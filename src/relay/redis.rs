//! A relay cluster's shared state in Redis: any number of stateless relay
//! processes serve the same topics (`pluresdb relay --redis URL`).
//!
//! Keys, per topic (`{hex}` is the topic in hex, a hash tag):
//! - `pluresdb:relay:{hex}:log`: a stream of the envelopes kept (LIVE),
//!   fields `n` (bytes), `f` (sender connection), `e` (the sealed
//!   envelope). An entry's id (`ms-seq`) is the client's resume cursor,
//!   packed into the protocol's u64 as `ms << 20 | seq`. The single-node
//!   limits hold on every insert (frames, bytes and age per topic).
//! - `pluresdb:relay:{hex}:bytes`: the bytes in the log.
//! - `pluresdb:relay:{hex}:live`: a short stream of what is for whoever is
//!   online (HELLO, DELTA, ACK: `f`, `e`) and of membership changes (`m` 1
//!   joined or 2 left, `c` connection, `k` other members), at most 256
//!   entries and 10 s old.
//! - `pluresdb:relay:{hex}:members`: connection → expiry (ms); relays
//!   refresh their members every 10 s, so a dead relay's members leave
//!   within 30 s.
//!
//! And in total: `pluresdb:relay:topics` (a sorted set of topics with a
//! log, scored by their oldest entry's ms), `pluresdb:relay:bytes` (bytes
//! in every log), `pluresdb:relay:wake:<instance>` (wakes one relay's
//! reader when it follows a new topic).
//!
//! Every change is one Lua script, so relays never see a half-made one.
//! Time comes from Redis (`TIME`), so relays' clocks do not matter. Redis
//! sees topics and ciphertext only, like the single-node backlog.
//!
//! Fan-out: each relay reads the streams of the topics it has members in
//! with one blocking `XREAD` and delivers every entry, its own included, to
//! its members in stream order, so a member's cursor never passes an
//! envelope it did not get.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use super::backlog::BacklogLimits;
use super::store::{EnvelopeLog, Kept, Refusal, StoreFuture};
use crate::sync::Topic;

/// Bits of a stream id's sequence part in a packed cursor.
const SEQ_BITS: u32 = 20;
/// Entries of a topic's live stream kept for readers that lag.
const LIVE_ENTRIES: u32 = 256;
/// How old a live entry may get before it is trimmed (ms).
const LIVE_MAX_AGE_MS: u64 = 10_000;
/// How long one blocking read waits for new entries (ms).
const READ_BLOCK_MS: u64 = 2_000;
/// Entries read per stream and read.
const READ_COUNT: usize = 32;
/// Entries trimmed per script call at most (the rest on the next call).
const TRIM_BUDGET: u32 = 1_000;
/// Any one command's reply must come within this (the blocking read gets
/// its block time on top).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Packs a stream id `ms-seq` into a cursor.
pub(crate) fn sequence_of(id: &str) -> Option<u64> {
    let (ms, seq) = id.split_once('-')?;
    let ms: u64 = ms.parse().ok()?;
    let seq: u64 = seq.parse().ok()?;
    (seq < 1 << SEQ_BITS && ms < 1 << (64 - SEQ_BITS)).then_some(ms << SEQ_BITS | seq)
}

/// The stream id a cursor stands for.
pub(crate) fn id_of(sequence: u64) -> String {
    format!(
        "{}-{}",
        sequence >> SEQ_BITS,
        sequence & ((1 << SEQ_BITS) - 1)
    )
}

/// Shared Lua: the time in ms on Redis's clock, and a stream id's ms.
const CLOCK_LUA: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function first_ms(id) return tonumber(string.match(id, '^(%d+)')) end
"#;

/// Shared Lua: `drop_first(log, bytes, topics, total, hex)` drops a
/// topic's oldest entry and rescores (or forgets) the topic;
/// `trim(log, bytes, topics, total, hex, frames, topic_bytes, min_ms,
/// budget)` drops oldest entries while the topic is over a limit.
static TRIM_LUA: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{CLOCK_LUA}{}",
        r#"
local function drop_first(log, bytes_key, topics, total, hex)
  local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]
  if first then
    local size = tonumber(first[2][2])
    redis.call('XDEL', log, first[1])
    redis.call('DECRBY', bytes_key, size)
    redis.call('DECRBY', total, size)
  end
  local next = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]
  if next then
    redis.call('ZADD', topics, first_ms(next[1]), hex)
  else
    redis.call('DEL', log, bytes_key)
    redis.call('ZREM', topics, hex)
  end
end
local function trim(log, bytes_key, topics, total, hex, frames, topic_bytes, min_ms, budget)
  local dropped = 0
  while dropped < budget do
    local len = redis.call('XLEN', log)
    if len == 0 then break end
    local bytes = tonumber(redis.call('GET', bytes_key) or '0')
    local oldest = tonumber(redis.call('ZSCORE', topics, hex) or '0')
    if len <= frames and bytes <= topic_bytes and oldest >= min_ms then break end
    drop_first(log, bytes_key, topics, total, hex)
    dropped = dropped + 1
  end
  return dropped
end
"#
    )
});

/// KEYS log, bytes, topics, total; ARGV hex, from, envelope, frames,
/// topic_bytes, max_age_ms, max_topics, member_topics.
/// Returns {id, total bytes, topics} or the error `PLURESDB_TOPICS`.
static STORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}
local log, bytes_key, topics, total = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local hex, from, envelope = ARGV[1], ARGV[2], ARGV[3]
local known = redis.call('ZSCORE', topics, hex)
if not known and redis.call('ZCARD', topics) + tonumber(ARGV[8]) >= tonumber(ARGV[7]) then
  return redis.error_reply('PLURESDB_TOPICS the relay keeps backlogs for as many topics as it takes')
end
local size = string.len(envelope)
local id = redis.call('XADD', log, '*', 'n', size, 'f', from, 'e', envelope)
if not known then redis.call('ZADD', topics, first_ms(id), hex) end
redis.call('INCRBY', bytes_key, size)
redis.call('INCRBY', total, size)
trim(log, bytes_key, topics, total, hex, tonumber(ARGV[4]), tonumber(ARGV[5]),
     now_ms() - tonumber(ARGV[6]), {TRIM_BUDGET})
return {{id, tonumber(redis.call('GET', total) or '0'), redis.call('ZCARD', topics)}}
",
        TRIM_LUA.as_str()
    ))
});

/// KEYS log, bytes, topics, total; ARGV hex, frames, topic_bytes,
/// max_age_ms. Trims one topic (the age sweep).
static TRIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}
return trim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
            now_ms() - tonumber(ARGV[4]), {TRIM_BUDGET})
",
        TRIM_LUA.as_str()
    ))
});

/// KEYS topics, total; ARGV limit, key prefix. Drops the oldest entries of
/// any topic while the logs hold more than `limit` bytes in total. (It
/// names other keys than it is given, so it needs a single Redis, not
/// Redis Cluster.)
static TRIM_TOTAL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}
local topics, total, limit, prefix = KEYS[1], KEYS[2], tonumber(ARGV[1]), ARGV[2]
local dropped = 0
while dropped < {TRIM_BUDGET} and tonumber(redis.call('GET', total) or '0') > limit do
  local oldest = redis.call('ZRANGE', topics, 0, 0)[1]
  if not oldest then redis.call('SET', total, 0) break end
  drop_first(prefix .. '{{' .. oldest .. '}}:log', prefix .. '{{' .. oldest .. '}}:bytes',
             topics, total, oldest)
  dropped = dropped + 1
end
return dropped
",
        TRIM_LUA.as_str()
    ))
});

/// KEYS log; ARGV after (exclusive id), head (id), max bytes. The entries
/// after `after` up to `head` as {id, envelope, id, envelope, …}, at most
/// 256 and about `max bytes` (at least one): entries are read one at a
/// time, so neither Redis nor the relay holds more than a batch.
static AFTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local log, cursor, head, budget = KEYS[1], '(' .. ARGV[1], ARGV[2], tonumber(ARGV[3])
local out, bytes = {}, 0
for _ = 1, 256 do
  local entry = redis.call('XRANGE', log, cursor, head, 'COUNT', 1)[1]
  if not entry then break end
  local envelope = entry[2][6]
  out[#out + 1] = entry[1]
  out[#out + 1] = envelope
  bytes = bytes + string.len(envelope)
  cursor = '(' .. entry[1]
  if bytes >= budget then break end
end
return out
"#,
    )
});

/// Shared Lua of the membership scripts: drops expired members (announcing
/// each as left) and adds a live entry.
const PRESENCE_LUA: &str = r#"
local function live_add(live, ...)
  local id = redis.call('XADD', live, 'MAXLEN', '~', ARGV[1], '*', ...)
  redis.call('XTRIM', live, 'MINID', '~', tostring(now_ms() - tonumber(ARGV[2])))
  redis.call('PEXPIRE', live, 60000)
  return id
end
local function reap(members, live, now)
  local all = redis.call('HGETALL', members)
  for i = 1, #all, 2 do
    if tonumber(all[i + 1]) < now then
      redis.call('HDEL', members, all[i])
      local others = math.max(redis.call('HLEN', members) - 1, 0)
      live_add(live, 'm', 2, 'c', all[i], 'k', others)
    end
  end
end
"#;

/// KEYS members, live; ARGV live entries, live age ms, ttl ms, max
/// members, joining connection, refreshed connections…
/// Returns {other members after the change, the joined entry's id}, or
/// {-1, ''} when full.
static PRESENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{CLOCK_LUA}{PRESENCE_LUA}
local members, live = KEYS[1], KEYS[2]
local now = now_ms()
local ttl = tonumber(ARGV[3])
reap(members, live, now)
for i = 6, #ARGV do
  -- A member whose lease ran out while its relay could not reach Redis
  -- (the others heard it left) is back: say so.
  if redis.call('HSET', members, ARGV[i], now + ttl) == 1 then
    live_add(live, 'm', 1, 'c', ARGV[i], 'k', redis.call('HLEN', members) - 1)
  end
end
local joining = ARGV[5]
local joined = ''
if joining ~= '' then
  if redis.call('HLEN', members) >= tonumber(ARGV[4]) then return {{-1, ''}} end
  redis.call('HSET', members, joining, now + ttl)
  joined = live_add(live, 'm', 1, 'c', joining, 'k', redis.call('HLEN', members) - 1)
end
redis.call('PEXPIRE', members, ttl * 2)
return {{math.max(redis.call('HLEN', members) - 1, 0), joined}}
"
    ))
});

/// KEYS members, live; ARGV live entries, live age ms, leaving connection.
static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{CLOCK_LUA}{PRESENCE_LUA}
local members, live = KEYS[1], KEYS[2]
if redis.call('HDEL', members, ARGV[3]) == 1 then
  live_add(live, 'm', 2, 'c', ARGV[3], 'k', math.max(redis.call('HLEN', members) - 1, 0))
end
return 0
"
    ))
});

/// KEYS live; ARGV live entries, live age ms, from, envelope.
static BROADCAST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{CLOCK_LUA}{PRESENCE_LUA}
live_add(KEYS[1], 'f', ARGV[3], 'e', ARGV[4])
return 0
"
    ))
});

/// Where a relay has read a topic's streams up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Positions {
    /// The log's last entry delivered (a packed cursor; 0: none).
    pub log: u64,
    /// The live stream's last entry delivered (`ms`, `seq`).
    pub live: (u64, u64),
}

/// One entry read from a topic's streams.
#[derive(Debug)]
pub(crate) enum Entry {
    /// A kept envelope, with its cursor.
    Kept {
        sequence: u64,
        from: u64,
        envelope: Vec<u8>,
    },
    /// An envelope for whoever is online.
    Live {
        id: (u64, u64),
        from: u64,
        envelope: Vec<u8>,
    },
    /// A member joined or left.
    Member {
        id: (u64, u64),
        joined: bool,
        connection: u64,
        members: u32,
    },
}

/// The relay cluster's Redis: the envelope log, membership and fan-out.
pub(crate) struct RedisHub {
    commands: ConnectionManager,
    reader: ConnectionManager,
    url: String,
    limits: BacklogLimits,
    /// How long a member counts without its relay renewing its lease.
    member_lease: Duration,
    /// This relay process's random id (connection ids carry it).
    pub instance: u32,
    topics_seen: AtomicUsize,
    bytes_seen: AtomicU64,
}

/// Key prefix of everything the relay keeps.
const PREFIX: &str = "pluresdb:relay:";

fn hex(topic: &Topic) -> String {
    topic.iter().map(|b| format!("{b:02x}")).collect()
}

fn topic_key(topic: &Topic, what: &str) -> String {
    format!("{PREFIX}{{{}}}:{what}", hex(topic))
}

/// The topic and stream kind a key names.
fn parse_key(key: &[u8]) -> Option<(Topic, bool)> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix(PREFIX)?.strip_prefix('{')?;
    let (hex, kind) = rest.split_once("}:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut topic = [0u8; 32];
    for (i, byte) in topic.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    match kind {
        "log" => Some((topic, true)),
        "live" => Some((topic, false)),
        _ => None,
    }
}

fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// A stream entry's fields as (name, value) pairs.
fn fields(value: &Value) -> Vec<(&[u8], &Value)> {
    let Value::Array(items) = value else {
        return Vec::new();
    };
    items
        .chunks_exact(2)
        .filter_map(|pair| match &pair[0] {
            Value::BulkString(name) => Some((name.as_slice(), &pair[1])),
            _ => None,
        })
        .collect()
}

fn field<'a>(fields: &[(&[u8], &'a Value)], name: &str) -> Option<&'a Value> {
    fields
        .iter()
        .find(|(n, _)| *n == name.as_bytes())
        .map(|(_, v)| *v)
}

/// A membership script's call with its shared keys and arguments (the
/// topic's members and live stream; the live stream's bounds).
fn membership<'a>(script: &'a Script, topic: &Topic) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    invocation
        .key(topic_key(topic, "members"))
        .key(topic_key(topic, "live"))
        .arg(LIVE_ENTRIES)
        .arg(LIVE_MAX_AGE_MS);
    invocation
}

fn unavailable(error: redis::RedisError) -> Refusal {
    Refusal::Unavailable(format!("Redis: {error}"))
}

impl RedisHub {
    /// Connects to the Redis at `url` (fails when it cannot be reached).
    pub async fn connect(
        url: &str,
        limits: BacklogLimits,
        member_lease: Duration,
    ) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("bad Redis URL {url:?}: {e}"))?;
        let config = || {
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(2))
        };
        let commands = client
            .get_connection_manager_with_config(
                config().set_response_timeout(Some(RESPONSE_TIMEOUT)),
            )
            .await
            .map_err(|e| format!("cannot reach Redis at {url}: {e}"))?;
        let reader = client
            .get_connection_manager_with_config(config().set_response_timeout(Some(
                RESPONSE_TIMEOUT + Duration::from_millis(READ_BLOCK_MS),
            )))
            .await
            .map_err(|e| format!("cannot reach Redis at {url}: {e}"))?;
        // Redis Cluster would refuse the scripts and reads that name keys
        // of several topics (CROSSSLOT) on every publish: say so at start.
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut commands.clone())
            .await
            .map_err(|e| format!("cannot query Redis at {url}: {e}"))?;
        if info.lines().any(|line| line.trim() == "cluster_enabled:1") {
            return Err(format!(
                "Redis at {url} runs in cluster mode, which the relay does not support \
                 (see docs/DEPLOY.md); give it a standalone Redis or a primary with replicas"
            ));
        }
        let mut instance = [0u8; 4];
        getrandom::getrandom(&mut instance).map_err(|e| e.to_string())?;
        let hub = Self {
            commands,
            reader,
            url: url.to_string(),
            limits,
            member_lease,
            instance: u32::from_le_bytes(instance).max(1),
            topics_seen: AtomicUsize::new(0),
            bytes_seen: AtomicU64::new(0),
        };
        hub.refresh_usage().await;
        Ok(hub)
    }

    /// Whether Redis answers now (within the reply timeout).
    pub async fn ping(&self) -> Result<(), Refusal> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.commands.clone())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// How often this relay renews its members' leases (a third of the
    /// lease, so one missed renewal does not end a lease).
    pub fn renewal_interval(&self) -> Duration {
        (self.member_lease / 3).max(Duration::from_millis(100))
    }

    fn lease_ms(&self) -> u64 {
        self.member_lease
            .as_millis()
            .clamp(300, u128::from(u32::MAX)) as u64
    }

    /// The Redis this hub uses (for messages).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn wake_key(&self) -> String {
        format!("{PREFIX}wake:{}", self.instance)
    }

    async fn refresh_usage(&self) {
        let mut connection = self.commands.clone();
        let usage: redis::RedisResult<(usize, Option<u64>)> = redis::pipe()
            .zcard(format!("{PREFIX}topics"))
            .get(format!("{PREFIX}bytes"))
            .query_async(&mut connection)
            .await;
        if let Ok((topics, bytes)) = usage {
            self.topics_seen.store(topics, Ordering::Relaxed);
            self.bytes_seen.store(bytes.unwrap_or(0), Ordering::Relaxed);
        }
    }

    /// Whether a member may join `topic` without passing the topic limit
    /// across the cluster, `member_topics` being this relay's topics with
    /// members and no backlog.
    pub async fn admits(&self, topic: &Topic, member_topics: usize) -> Result<bool, Refusal> {
        let (known, topics): (Option<f64>, usize) = redis::pipe()
            .zscore(format!("{PREFIX}topics"), hex(topic))
            .zcard(format!("{PREFIX}topics"))
            .query_async(&mut self.commands.clone())
            .await
            .map_err(unavailable)?;
        self.topics_seen.store(topics, Ordering::Relaxed);
        Ok(known.is_some() || topics.saturating_add(member_topics) < self.limits.max_topics)
    }

    /// Joins `connection` to `topic` across the cluster: the other members
    /// after it joined and the live entry announcing it (membership news
    /// older than that is not the member's), or `None` when the topic is
    /// full.
    pub async fn join(
        &self,
        topic: &Topic,
        connection: u64,
        max_members: usize,
    ) -> Result<Option<(u32, (u64, u64))>, Refusal> {
        let mut invocation = membership(&PRESENCE, topic);
        invocation
            .arg(self.lease_ms())
            .arg(max_members)
            .arg(connection.to_string());
        let (others, joined): (i64, String) = invocation
            .invoke_async(&mut self.commands.clone())
            .await
            .map_err(unavailable)?;
        Ok(u32::try_from(others)
            .ok()
            .map(|others| (others, parse_id(&joined).unwrap_or((0, 0)))))
    }

    /// Keeps this relay's members of `topic` counted (and drops members of
    /// relays that stopped refreshing theirs).
    pub async fn refresh(&self, topic: &Topic, connections: &[u64]) -> Result<(), Refusal> {
        let mut invocation = membership(&PRESENCE, topic);
        invocation.arg(self.lease_ms()).arg(0).arg("");
        for connection in connections {
            invocation.arg(connection.to_string());
        }
        invocation
            .invoke_async::<(i64, String)>(&mut self.commands.clone())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// `connection` left `topic`.
    pub async fn leave(&self, topic: &Topic, connection: u64) -> Result<(), Refusal> {
        let mut invocation = membership(&LEAVE, topic);
        invocation.arg(connection.to_string());
        invocation
            .invoke_async::<i64>(&mut self.commands.clone())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Hands an envelope that is not kept to every relay with members of
    /// `topic`.
    pub async fn broadcast(
        &self,
        topic: &Topic,
        from: u64,
        envelope: &[u8],
    ) -> Result<(), Refusal> {
        let mut invocation = BROADCAST.prepare_invoke();
        invocation
            .key(topic_key(topic, "live"))
            .arg(LIVE_ENTRIES)
            .arg(LIVE_MAX_AGE_MS)
            .arg(from.to_string())
            .arg(envelope);
        invocation
            .invoke_async::<i64>(&mut self.commands.clone())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Where a relay that starts following `topic` now starts reading: the
    /// log's and the live stream's last entries.
    pub async fn positions(&self, topic: &Topic) -> Result<Positions, Refusal> {
        let (log, live): (Value, Value) = redis::pipe()
            .cmd("XREVRANGE")
            .arg(topic_key(topic, "log"))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .cmd("XREVRANGE")
            .arg(topic_key(topic, "live"))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.commands.clone())
            .await
            .map_err(unavailable)?;
        let last_id = |value: &Value| -> Option<String> {
            let Value::Array(entries) = value else {
                return None;
            };
            let Value::Array(entry) = entries.first()? else {
                return None;
            };
            text(entry.first()?).map(str::to_string)
        };
        Ok(Positions {
            log: last_id(&log).and_then(|id| sequence_of(&id)).unwrap_or(0),
            live: last_id(&live)
                .and_then(|id| parse_id(&id))
                .unwrap_or((0, 0)),
        })
    }

    /// Wakes this relay's reader (it follows a new topic).
    pub async fn wake(&self) {
        // A day after its relay's last wake-up, the key goes.
        let _: redis::RedisResult<Value> = redis::pipe()
            .cmd("XADD")
            .arg(self.wake_key())
            .arg("MAXLEN")
            .arg(16)
            .arg("*")
            .arg("w")
            .arg(1)
            .ignore()
            .pexpire(self.wake_key(), 86_400_000)
            .ignore()
            .query_async(&mut self.commands.clone())
            .await;
    }

    /// Waits (up to about two seconds) for entries after `positions` of
    /// the followed topics, or for a wake-up; `wake_cursor` is where this
    /// relay's wake stream was read up to.
    pub async fn read(
        &self,
        followed: &[(Topic, Positions)],
        wake_cursor: &mut String,
    ) -> Result<Vec<(Topic, Entry)>, Refusal> {
        let mut command = redis::cmd("XREAD");
        command
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(READ_BLOCK_MS)
            .arg("STREAMS");
        command.arg(self.wake_key());
        for (topic, _) in followed {
            command.arg(topic_key(topic, "log"));
            command.arg(topic_key(topic, "live"));
        }
        command.arg(wake_cursor.as_str());
        for (_, positions) in followed {
            command.arg(id_of(positions.log));
            command.arg(format!("{}-{}", positions.live.0, positions.live.1));
        }
        let reply: Value = command
            .query_async(&mut self.reader.clone())
            .await
            .map_err(unavailable)?;
        let mut entries = Vec::new();
        let Value::Array(streams) = reply else {
            return Ok(entries); // Nil: nothing new in time
        };
        for stream in &streams {
            let Value::Array(parts) = stream else {
                continue;
            };
            let (Some(Value::BulkString(key)), Some(Value::Array(items))) =
                (parts.first(), parts.get(1))
            else {
                continue;
            };
            let parsed = parse_key(key);
            for item in items {
                let Value::Array(item) = item else { continue };
                let (Some(id), Some(values)) = (item.first().and_then(text), item.get(1)) else {
                    continue;
                };
                let Some((topic, kept)) = parsed else {
                    // The wake stream.
                    *wake_cursor = id.to_string();
                    continue;
                };
                let values = fields(values);
                let envelope = match field(&values, "e") {
                    Some(Value::BulkString(bytes)) => Some(bytes.clone()),
                    _ => None,
                };
                let from = field(&values, "f").and_then(number).unwrap_or(0);
                let entry = if kept {
                    let (Some(sequence), Some(envelope)) = (sequence_of(id), envelope) else {
                        continue;
                    };
                    Entry::Kept {
                        sequence,
                        from,
                        envelope,
                    }
                } else {
                    let Some(id) = parse_id(id) else { continue };
                    match (envelope, field(&values, "m").and_then(number)) {
                        (Some(envelope), _) => Entry::Live { id, from, envelope },
                        (None, Some(change)) => Entry::Member {
                            id,
                            joined: change == 1,
                            connection: field(&values, "c").and_then(number).unwrap_or(0),
                            members: field(&values, "k")
                                .and_then(number)
                                .map_or(0, |k| k.min(u64::from(u32::MAX)) as u32),
                        },
                        (None, None) => continue,
                    }
                };
                entries.push((topic, entry));
            }
        }
        Ok(entries)
    }

    /// The wake stream's last id now (a new reader starts there).
    pub async fn wake_position(&self) -> String {
        let reply: redis::RedisResult<Value> = redis::cmd("XREVRANGE")
            .arg(self.wake_key())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.commands.clone())
            .await;
        if let Ok(Value::Array(entries)) = reply {
            if let Some(Value::Array(entry)) = entries.first() {
                if let Some(id) = entry.first().and_then(text) {
                    return id.to_string();
                }
            }
        }
        "0-0".to_string()
    }

    async fn trim_total(&self) {
        let mut invocation = TRIM_TOTAL.prepare_invoke();
        invocation
            .key(format!("{PREFIX}topics"))
            .key(format!("{PREFIX}bytes"))
            .arg(self.limits.total_bytes)
            .arg(PREFIX);
        if let Err(error) = invocation
            .invoke_async::<i64>(&mut self.commands.clone())
            .await
        {
            tracing::warn!(%error, "trimming the relay backlog in Redis failed");
        }
    }

    fn max_age_ms(&self) -> u64 {
        self.limits.max_age.as_millis().min(u128::from(u64::MAX)) as u64
    }
}

impl EnvelopeLog for RedisHub {
    fn store(
        &self,
        topic: Topic,
        from: u64,
        envelope: Vec<u8>,
        member_topics: usize,
    ) -> StoreFuture<'_, Result<u64, Refusal>> {
        Box::pin(async move {
            let mut invocation = STORE.prepare_invoke();
            invocation
                .key(topic_key(&topic, "log"))
                .key(topic_key(&topic, "bytes"))
                .key(format!("{PREFIX}topics"))
                .key(format!("{PREFIX}bytes"))
                .arg(hex(&topic))
                .arg(from.to_string())
                .arg(envelope)
                .arg(self.limits.frames)
                .arg(self.limits.topic_bytes)
                .arg(self.max_age_ms())
                .arg(self.limits.max_topics)
                .arg(member_topics);
            let reply: Result<(String, u64, usize), _> =
                invocation.invoke_async(&mut self.commands.clone()).await;
            let (id, total, topics) = match reply {
                Ok(reply) => reply,
                Err(error) if error.to_string().contains("PLURESDB_TOPICS") => {
                    return Err(Refusal::TooManyTopics)
                }
                Err(error) => return Err(unavailable(error)),
            };
            self.topics_seen.store(topics, Ordering::Relaxed);
            self.bytes_seen.store(total, Ordering::Relaxed);
            if total > self.limits.total_bytes {
                self.trim_total().await;
            }
            sequence_of(&id).ok_or_else(|| {
                Refusal::Unavailable(format!(
                    "Redis gave the stream id {id}, past what a cursor holds"
                ))
            })
        })
    }

    fn head(&self, topic: Topic) -> StoreFuture<'_, Result<u64, Refusal>> {
        Box::pin(async move { Ok(self.positions(&topic).await?.log) })
    }

    fn after(
        &self,
        topic: Topic,
        after: u64,
        head: u64,
        max_bytes: usize,
    ) -> StoreFuture<'_, Result<Vec<Kept>, Refusal>> {
        Box::pin(async move {
            let mut invocation = AFTER.prepare_invoke();
            invocation
                .key(topic_key(&topic, "log"))
                .arg(id_of(after))
                .arg(id_of(head))
                .arg(max_bytes);
            let reply: Vec<Value> = invocation
                .invoke_async(&mut self.commands.clone())
                .await
                .map_err(unavailable)?;
            Ok(reply
                .chunks_exact(2)
                .filter_map(
                    |pair| match (text(&pair[0]).and_then(sequence_of), &pair[1]) {
                        (Some(sequence), Value::BulkString(envelope)) => {
                            Some((sequence, envelope.clone()))
                        }
                        _ => None,
                    },
                )
                .collect())
        })
    }

    fn expire(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut connection = self.commands.clone();
            let time: redis::RedisResult<(String, String)> =
                redis::cmd("TIME").query_async(&mut connection).await;
            let Ok((seconds, micros)) = time else { return };
            let now_ms = seconds.parse::<u64>().unwrap_or(0) * 1000
                + micros.parse::<u64>().unwrap_or(0) / 1000;
            let cutoff = now_ms.saturating_sub(self.max_age_ms());
            let stale: redis::RedisResult<Vec<String>> = redis::cmd("ZRANGEBYSCORE")
                .arg(format!("{PREFIX}topics"))
                .arg("-inf")
                .arg(format!("({cutoff}"))
                .arg("LIMIT")
                .arg(0)
                .arg(1_000)
                .query_async(&mut connection)
                .await;
            for hex in stale.unwrap_or_default() {
                let mut invocation = TRIM.prepare_invoke();
                invocation
                    .key(format!("{PREFIX}{{{hex}}}:log"))
                    .key(format!("{PREFIX}{{{hex}}}:bytes"))
                    .key(format!("{PREFIX}topics"))
                    .key(format!("{PREFIX}bytes"))
                    .arg(&hex)
                    .arg(self.limits.frames)
                    .arg(self.limits.topic_bytes)
                    .arg(self.max_age_ms());
                if let Err(error) = invocation.invoke_async::<i64>(&mut connection).await {
                    tracing::warn!(%error, "expiring relay backlog envelopes in Redis failed");
                    return;
                }
            }
            self.refresh_usage().await;
        })
    }

    fn usage(&self) -> (usize, u64) {
        (
            self.topics_seen.load(Ordering::Relaxed),
            self.bytes_seen.load(Ordering::Relaxed),
        )
    }

    fn holds(&self, _topic: &Topic) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_stream_ids() {
        for id in [
            "0-1",
            "1733390000000-0",
            "1733390000000-1048575",
            "17592186044415-7",
        ] {
            let sequence = sequence_of(id).unwrap();
            assert_eq!(id_of(sequence), id);
        }
        // Later ids give larger cursors.
        assert!(sequence_of("5-0").unwrap() > sequence_of("4-1048575").unwrap());
        // What does not fit is refused, never wrapped.
        assert_eq!(sequence_of("1-1048576"), None);
        assert_eq!(sequence_of("17592186044416-0"), None);
        assert_eq!(sequence_of("x-1"), None);
        assert_eq!(sequence_of("12"), None);
    }

    #[test]
    fn keys_name_their_topic() {
        let topic = [0xabu8; 32];
        assert_eq!(
            parse_key(topic_key(&topic, "log").as_bytes()),
            Some((topic, true))
        );
        assert_eq!(
            parse_key(topic_key(&topic, "live").as_bytes()),
            Some((topic, false))
        );
        assert_eq!(parse_key(topic_key(&topic, "members").as_bytes()), None);
        assert_eq!(parse_key(b"pluresdb:relay:wake:7"), None);
    }
}
