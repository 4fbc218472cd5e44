//! Records, their versions, and the merge rule.
//!
//! A [`Record`] holds the *maximal* versions written for one id: the versions
//! no other known version has seen. Usually that is one version; after
//! concurrent writes it is several. The winner is the version with the
//! greatest `(hlc, writer)`; the others are the record's conflicts, readable
//! until a later write (whose clock covers them all) supersedes them.
//!
//! Merging keeps the set of maximal versions of the union of everything seen,
//! which does not depend on delivery order, so merge is commutative,
//! associative and idempotent.

use smallvec::SmallVec;
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use super::clock::{ActorId, Dot, Hlc, VectorClock};
use crate::codec::{Reader, Writer};
use crate::error::{DecodeError, InputError};

/// Longest record id accepted, in UTF-8 bytes.
pub const MAX_ID_BYTES: usize = 1024;
/// Largest JSON document accepted, in UTF-8 bytes (8 MiB).
pub const MAX_DOCUMENT_BYTES: usize = 8 * 1024 * 1024;
/// Largest embedding dimension accepted.
pub const MAX_EMBEDDING_DIM: usize = 8192;
/// Version byte of the record and operation encodings.
pub const RECORD_ENCODING_VERSION: u8 = 1;

/// Checks that `id` is a valid record id: 1 to [`MAX_ID_BYTES`] bytes, no
/// control characters.
pub fn validate_id(id: &str) -> Result<(), InputError> {
    if id.is_empty() {
        return Err(InputError::InvalidId("ids must not be empty".into()));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(InputError::InvalidId(format!(
            "ids are at most {MAX_ID_BYTES} bytes, got {}",
            id.len()
        )));
    }
    if has_control_character(id) {
        return Err(InputError::InvalidId(
            "ids must not contain control characters".into(),
        ));
    }
    Ok(())
}

/// Whether `text` holds a control character (`char::is_control`: Unicode
/// category Cc, U+0000–U+001F and U+007F–U+009F). Checked on bytes, without
/// decoding characters (every stored id is checked again when a database
/// opens): in UTF-8 these are the bytes below 0x20, 0x7F, and the two-byte
/// sequences 0xC2 0x80–0x9F (0xC2 is never a continuation byte).
fn has_control_character(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().any(|byte| *byte < 0x20 || *byte == 0x7f)
        || bytes
            .windows(2)
            .any(|pair| pair[0] == 0xc2 && pair[1] <= 0x9f)
}

/// A JSON document in canonical text form (object keys sorted, no
/// insignificant white space), so equal documents are equal bytes on every
/// replica. Cheap to clone. Only the text is kept: a parsed value is built
/// when asked for and not cached, because a cache would keep a parse of
/// every document a scan touched for as long as the database is open
/// (about 500 bytes a small document: a full scan of a million records
/// would keep half a gigabyte).
#[derive(Clone)]
pub struct Document(Arc<str>);

impl Document {
    fn from_text(text: &str) -> Self {
        Self(Arc::from(text))
    }

    /// Canonicalises a JSON value.
    pub fn from_value(value: &serde_json::Value) -> Result<Self, InputError> {
        // serde_json's Map is ordered by key (no `preserve_order`), so this
        // writes keys sorted.
        let text =
            serde_json::to_string(value).map_err(|e| InputError::InvalidDocument(e.to_string()))?;
        Self::check_size(text.len())?;
        Ok(Self::from_text(&text))
    }

    /// Parses and canonicalises JSON text.
    pub fn parse(text: &str) -> Result<Self, InputError> {
        Self::check_size(text.len())?;
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| InputError::InvalidDocument(format!("not valid JSON: {e}")))?;
        Self::from_value(&value)
    }

    /// Wraps decoded text, checking that it is JSON unless the bytes come
    /// from this replica's own storage.
    fn from_encoded(text: &str, check: JsonCheck) -> Result<Self, DecodeError> {
        if check == JsonCheck::Validate {
            serde_json::from_str::<serde::de::IgnoredAny>(text)
                .map_err(|e| DecodeError::Invalid(format!("document is not valid JSON: {e}")))?;
        }
        Ok(Self::from_text(text))
    }

    /// Wraps JSON text produced by `JSON.stringify` (the JavaScript API's own
    /// glue), which is valid JSON by construction. Not canonicalised: replicas
    /// store the bytes the writer produced, so they still agree byte for byte.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn from_stringified(text: String) -> Result<Self, InputError> {
        Self::check_size(text.len())?;
        Ok(Self::from_text(&text))
    }

    /// Wraps JSON text as it is (not canonicalised, like
    /// `from_stringified`) after checking that it is valid JSON: for
    /// bindings whose glue writes the text with `JSON.stringify`, such as
    /// the Node addon, which must not trust its callers.
    pub fn from_json_text(text: String) -> Result<Self, InputError> {
        Self::check_size(text.len())?;
        serde_json::from_str::<serde::de::IgnoredAny>(&text)
            .map_err(|e| InputError::InvalidDocument(format!("not valid JSON: {e}")))?;
        Ok(Self::from_text(&text))
    }

    /// Wraps a JSON value serde_json already parsed as raw text (so it is
    /// valid JSON), as it is: how the Node addon takes `putMany`'s entries.
    pub fn from_raw_json(raw: &serde_json::value::RawValue) -> Result<Self, InputError> {
        Self::check_size(raw.get().len())?;
        Ok(Self::from_text(raw.get()))
    }

    fn check_size(len: usize) -> Result<(), InputError> {
        if len > MAX_DOCUMENT_BYTES {
            return Err(InputError::TooLarge {
                what: "document",
                size: len as u64,
                limit: MAX_DOCUMENT_BYTES as u64,
            });
        }
        Ok(())
    }

    /// The canonical JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The document as an owned JSON value (parsed on each call: see the
    /// type's docs).
    pub fn to_value(&self) -> serde_json::Value {
        // The text was produced by serde_json or checked on decode.
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }
}

impl PartialEq for Document {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Document {}

impl std::hash::Hash for Document {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A version's document: in memory, or left in storage by a database whose
/// bodies outgrew its cache (`OpenOptions::cache_bytes`), with its length.
#[derive(Clone)]
pub enum Body {
    /// The document, in memory.
    Resident(Document),
    /// Left in storage (the database's row for the record holds it).
    Stored {
        /// The document's length in bytes.
        len: u32,
        /// Where the storage said the row lay when the body left memory
        /// ([`StoredRow::hint`](crate::storage::StoredRow::hint)), or
        /// [`NO_HINT`]: a place to look first, never trusted (a body is
        /// taken only from a version with its dot).
        hint: u32,
    },
}

/// What holding a document in memory costs beside its text, as a cache
/// counts it: the shared allocation's two counters and the allocator's
/// header and rounding (16 bytes in WebAssembly, 24 natively). For notes of
/// 45 bytes, counting the text alone let the documents take 1.4 times the
/// cache.
pub const DOCUMENT_OVERHEAD_BYTES: usize = 2 * std::mem::size_of::<usize>() + 8;

/// A [`Body::Stored`] whose row's place is not known.
pub const NO_HINT: u32 = u32::MAX;

impl Body {
    /// The document, when it is in memory.
    pub fn document(&self) -> Option<&Document> {
        match self {
            Body::Resident(document) => Some(document),
            Body::Stored { .. } => None,
        }
    }

    /// Where storage said this body's row lay, when it was left there with
    /// a hint.
    pub fn storage_hint(&self) -> Option<u32> {
        match self {
            Body::Stored { hint, .. } if *hint != NO_HINT => Some(*hint),
            _ => None,
        }
    }

    /// True when the document was left in storage.
    pub fn is_stored(&self) -> bool {
        self.document().is_none()
    }

    /// The document's length in bytes, wherever it is.
    pub fn len(&self) -> usize {
        match self {
            Body::Resident(document) => document.as_str().len(),
            Body::Stored { len, .. } => *len as usize,
        }
    }

    /// True for an empty document (never a valid JSON text).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same body, left in storage whose row lies at `hint` (or
    /// [`NO_HINT`]). A body already there keeps the place it had.
    fn stored(&self, hint: u32) -> Body {
        match self {
            Body::Stored { .. } => self.clone(),
            Body::Resident(_) => Body::Stored {
                len: u32::try_from(self.len()).unwrap_or(u32::MAX),
                hint,
            },
        }
    }
}

impl From<Document> for Body {
    fn from(document: Document) -> Self {
        Body::Resident(document)
    }
}

/// Two bodies are equal when their documents are; a body left in storage is
/// taken for any document of its length. Only versions with one dot are ever
/// compared, and a database fills a stored body from storage before it
/// merges a version from elsewhere into it, so this meets only the copies a
/// database makes of its own versions.
impl PartialEq for Body {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Body::Resident(a), Body::Resident(b)) => a == b,
            _ => self.len() == other.len(),
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Resident(document) => document.fmt(f),
            Body::Stored { len, .. } => write!(f, "<{len} bytes in storage>"),
        }
    }
}

/// One write of a record: its data (or a tombstone), causal clock, HLC
/// timestamp, writer and optional embedding.
///
/// The writer is not held on its own: it is the clock's entry at
/// `writer_at` (a version's clock always holds its own dot), which saves 16
/// bytes on every version, 15 MiB a million records in WebAssembly.
#[derive(Clone, PartialEq)]
pub struct Version {
    /// Causal history; the writer's entry is this write's sequence number.
    clock: VectorClock,
    /// Where the writer's entry lies in `clock`.
    writer_at: u32,
    /// When it was written (hybrid logical time).
    pub hlc: Hlc,
    /// The document, or `None` for a delete (tombstone).
    pub data: Option<Body>,
    /// The vector indexed for semantic search, if any.
    pub embedding: Option<Arc<[f32]>>,
}

impl Version {
    /// The write `dot`, made having seen `history` (the dot is added to
    /// it: a version's clock always covers its own write). A dot's sequence
    /// number starts at 1; a zero one counts as 1. Clocks never go back: if
    /// `history` already names the writer at a higher number, the version's
    /// dot is that one (as observing the dot into the clock leaves it).
    pub fn new(
        dot: Dot,
        history: VectorClock,
        hlc: Hlc,
        data: Option<Body>,
        embedding: Option<Arc<[f32]>>,
    ) -> Self {
        let mut version = Self {
            clock: history,
            writer_at: 0,
            hlc,
            data,
            embedding,
        };
        version.clock.observe(dot.actor, dot.seq.max(1));
        version.writer_at = version.place_of(&dot.actor);
        version
    }

    /// The place of `writer`'s entry in the clock, which holds it.
    fn place_of(&self, writer: &ActorId) -> u32 {
        let place = self.clock.place_of(writer);
        debug_assert!(place.is_some(), "a version's clock holds its writer");
        place.unwrap_or(0) as u32
    }

    /// The actor that wrote it.
    pub fn writer(&self) -> ActorId {
        self.clock.entry_at(self.writer_at as usize).0
    }

    /// Its causal history: every write it had seen, its own included (the
    /// writer's entry is this write's sequence number).
    pub fn clock(&self) -> &VectorClock {
        &self.clock
    }

    /// Replaces the causal history with `clock`, keeping the writer: when
    /// `clock` has no entry for the writer, the write's own dot is added.
    pub fn set_clock(&mut self, clock: VectorClock) {
        let dot = self.dot();
        self.clock = clock;
        if self.clock.get(&dot.actor) == 0 {
            self.clock.observe(dot.actor, dot.seq);
        }
        self.writer_at = self.place_of(&dot.actor);
    }

    /// This write's dot `(writer, clock[writer])`.
    pub fn dot(&self) -> Dot {
        let (actor, seq) = self.clock.entry_at(self.writer_at as usize);
        Dot { actor, seq }
    }

    /// The document, when this is not a delete and its body is in memory.
    pub fn document(&self) -> Option<&Document> {
        self.data.as_ref()?.document()
    }

    /// True for a delete.
    pub fn is_tombstone(&self) -> bool {
        self.data.is_none()
    }

    /// True when `other` has seen this version and is a different write.
    pub fn is_superseded_by(&self, other: &Version) -> bool {
        let dot = self.dot();
        other.dot() != dot && other.clock.covers(&dot)
    }

    /// Total order among concurrent versions: greater `(hlc, writer)` wins.
    pub fn precedence(&self, other: &Version) -> Ordering {
        (self.hlc, self.writer()).cmp(&(other.hlc, other.writer()))
    }

    /// Appends the encoding (see `docs/ARCHITECTURE.md`, "Record encoding").
    pub fn encode(&self, writer: &mut Writer) {
        self.writer().encode(writer);
        self.hlc.encode(writer);
        self.clock.encode(writer);
        let mut flags = 0u8;
        if self.data.is_some() {
            flags |= FLAG_HAS_DATA;
        }
        if self.embedding.is_some() {
            flags |= FLAG_HAS_EMBEDDING;
        }
        writer.u8(flags);
        match &self.data {
            Some(Body::Resident(document)) => {
                writer.str(document.as_str());
            }
            // Never reached: a database fills every body of a record before
            // encoding it, refuses to commit a record it could not fill, and
            // fills the documents of a delta. An empty text is not JSON, so
            // a peer would refuse such an encoding rather than store it.
            Some(Body::Stored { .. }) => {
                debug_assert!(false, "encoding a body left in storage");
                writer.str("");
            }
            None => {}
        }
        if let Some(embedding) = &self.embedding {
            writer.u32(crate::codec::len_u32(embedding.len()));
            for value in embedding.iter() {
                writer.f32(*value);
            }
        }
    }

    /// Decodes what [`encode`](Self::encode) wrote.
    pub fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::decode_with(reader, JsonCheck::Validate)
    }

    fn decode_with(reader: &mut Reader<'_>, check: JsonCheck) -> Result<Self, DecodeError> {
        let writer = ActorId::decode(reader)?;
        let hlc = Hlc::decode(reader)?;
        let clock = VectorClock::decode(reader)?;
        let Some(writer_at) = clock.place_of(&writer) else {
            return Err(DecodeError::Invalid(
                "a version's clock must contain its writer".into(),
            ));
        };
        let flags = reader.u8()?;
        if flags & !(FLAG_HAS_DATA | FLAG_HAS_EMBEDDING) != 0 {
            return Err(DecodeError::Invalid(format!(
                "unknown version flags {flags:#04x}"
            )));
        }
        let data = if flags & FLAG_HAS_DATA != 0 {
            let text = reader.str()?;
            if text.len() > MAX_DOCUMENT_BYTES {
                return Err(DecodeError::TooLarge {
                    what: "document",
                    len: text.len() as u64,
                    max: MAX_DOCUMENT_BYTES as u64,
                });
            }
            Some(Body::Resident(Document::from_encoded(text, check)?))
        } else {
            None
        };
        let embedding = if flags & FLAG_HAS_EMBEDDING != 0 {
            let dim = reader.count(4)?;
            if dim == 0 || dim > MAX_EMBEDDING_DIM {
                return Err(DecodeError::Invalid(format!(
                    "embedding dimension {dim} is outside 1..={MAX_EMBEDDING_DIM}"
                )));
            }
            let mut values = Vec::with_capacity(dim);
            for _ in 0..dim {
                let value = reader.f32()?;
                if !value.is_finite() {
                    return Err(DecodeError::Invalid(
                        "embedding holds NaN or infinity".into(),
                    ));
                }
                values.push(value);
            }
            Some(values.into())
        } else {
            None
        };
        Ok(Self {
            clock,
            writer_at: writer_at as u32,
            hlc,
            data,
            embedding,
        })
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut writer = Writer::new();
        self.encode(&mut writer);
        writer.finish()
    }

    /// The length of [`encode`](Self::encode)'s output once every body is
    /// in memory (a body left in storage counts its stored length), worked
    /// out without encoding.
    pub fn encoded_len(&self) -> usize {
        ActorId::LEN
            + Hlc::LEN
            + 4
            + self.clock.len() * (ActorId::LEN + 8)
            + 1
            + self.data.as_ref().map_or(0, |body| 4 + body.len())
            + self.embedding.as_ref().map_or(0, |e| 4 + e.len() * 4)
    }
}

const FLAG_HAS_DATA: u8 = 0b01;
const FLAG_HAS_EMBEDDING: u8 = 0b10;

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Version")
            .field("dot", &self.dot())
            .field("hlc", &self.hlc)
            .field("clock", &self.clock)
            .field("data", &self.data)
            .field("embedding_dim", &self.embedding.as_ref().map(|e| e.len()))
            .finish()
    }
}

/// Everything known about one id: its maximal versions, winner first.
///
/// The first version is held inline (most records have one): a vector of
/// its own cost an allocation and 16 bytes more a record in WebAssembly.
#[derive(Clone, PartialEq)]
pub struct Record {
    id: Arc<str>,
    /// Non-empty antichain, sorted by descending precedence.
    versions: SmallVec<[Version; 1]>,
}

// What every resident record costs in WebAssembly beside its id's text
// (see `docs/ARCHITECTURE.md`, "Memory"): kept from growing unnoticed.
#[cfg(target_arch = "wasm32")]
const _: () = {
    assert!(std::mem::size_of::<Version>() == 64);
    assert!(std::mem::size_of::<Record>() == 76);
};

impl Record {
    /// A record holding one version.
    pub fn new(id: impl Into<Arc<str>>, version: Version) -> Self {
        Self {
            id: id.into(),
            versions: smallvec::smallvec![version],
        }
    }

    /// The record id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The record id, shared.
    pub fn shared_id(&self) -> &Arc<str> {
        &self.id
    }

    /// The winning version.
    pub fn winner(&self) -> &Version {
        &self.versions[0]
    }

    /// The winning document, or `None` when the record is deleted or its
    /// winning body was left in storage (see [`is_resident`](Self::is_resident);
    /// a `Database` fills bodies before it reads them).
    pub fn data(&self) -> Option<&Document> {
        self.winner().document()
    }

    /// True when every version's body is in memory.
    pub fn is_resident(&self) -> bool {
        self.versions
            .iter()
            .all(|version| !version.data.as_ref().is_some_and(Body::is_stored))
    }

    /// Bytes the documents held in memory take: their text and
    /// [`DOCUMENT_OVERHEAD_BYTES`] each.
    pub fn resident_bytes(&self) -> usize {
        self.versions
            .iter()
            .filter_map(|version| version.data.as_ref()?.document())
            .map(|document| document.as_str().len() + DOCUMENT_OVERHEAD_BYTES)
            .sum()
    }

    /// Leaves every body in storage, keeping its length; returns the bytes
    /// it gave back.
    pub fn leave_bodies_in_storage(&mut self) -> usize {
        self.leave_bodies_in_storage_at(NO_HINT)
    }

    /// [`leave_bodies_in_storage`](Self::leave_bodies_in_storage), noting
    /// that the row holding them lies at `hint` (as the storage that handed
    /// it over names places).
    pub fn leave_bodies_in_storage_at(&mut self, hint: u32) -> usize {
        let freed = self.resident_bytes();
        for version in &mut self.versions {
            if let Some(body) = &mut version.data {
                *body = body.stored(hint);
            }
        }
        freed
    }

    /// Forgets where the bodies it left in storage lie: they are then read
    /// from every row of the record.
    pub fn forget_storage_hints(&mut self) {
        for version in &mut self.versions {
            if let Some(Body::Stored { hint, .. }) = &mut version.data {
                *hint = NO_HINT;
            }
        }
    }

    /// The places storage gave for the rows holding the bodies this record
    /// left there, each once (usually one: the row it was loaded from).
    pub fn storage_hints(&self) -> Vec<u32> {
        let mut hints: Vec<u32> = Vec::new();
        for hint in self
            .versions
            .iter()
            .filter_map(|version| version.data.as_ref()?.storage_hint())
        {
            if !hints.contains(&hint) {
                hints.push(hint);
            }
        }
        hints
    }

    /// True when `stored` holds the document of every version whose body
    /// this record left in storage (matched by dot, as
    /// [`fill_bodies`](Self::fill_bodies) takes them).
    pub fn bodies_found_in(&self, stored: &Record) -> bool {
        self.versions
            .iter()
            .filter(|version| version.data.as_ref().is_some_and(Body::is_stored))
            .all(|version| {
                let dot = version.dot();
                stored
                    .versions
                    .iter()
                    .any(|candidate| candidate.dot() == dot && candidate.document().is_some())
            })
    }

    /// Takes the bodies this record left in storage from `stored`, the
    /// record's row as storage holds it, version by version (by dot).
    /// Returns false when a body is still missing: storage no longer holds
    /// that version (another writer superseded it).
    pub fn fill_bodies(&mut self, stored: &Record) -> bool {
        let mut complete = true;
        for version in &mut self.versions {
            if !version.data.as_ref().is_some_and(Body::is_stored) {
                continue;
            }
            let dot = version.dot();
            match stored
                .versions
                .iter()
                .find(|candidate| candidate.dot() == dot)
                .and_then(|candidate| candidate.data.as_ref()?.document())
            {
                Some(document) => version.data = Some(Body::Resident(document.clone())),
                None => complete = false,
            }
        }
        complete
    }

    /// True when the winning version is a tombstone.
    pub fn is_deleted(&self) -> bool {
        self.winner().is_tombstone()
    }

    /// Concurrent versions that lost to the winner, by descending precedence.
    pub fn conflicts(&self) -> &[Version] {
        &self.versions[1..]
    }

    /// Every maximal version, winner first.
    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    /// The pointwise maximum of all versions' clocks: what a new local write
    /// must cover to supersede every version.
    pub fn clock(&self) -> VectorClock {
        let mut clock = self.versions[0].clock.clone();
        for version in &self.versions[1..] {
            clock.merge(version.clock());
        }
        clock
    }

    /// Merges one version. Returns true when the record changed.
    pub fn merge_version(&mut self, incoming: Version) -> bool {
        let mut incoming = incoming;
        let dot = incoming.dot();
        if let Some(position) = self.versions.iter().position(|v| v.dot() == dot) {
            // The same write arriving twice is a no-op.
            let existing = &self.versions[position];
            if existing == &incoming {
                return false;
            }
            // Two different writes claiming one dot (a broken or forged peer,
            // a copied database file): settle them as one version that does
            // not depend on which arrived first, then merge that as usual, so
            // the record stays an antichain.
            let settled = settle_equivocation(existing, &incoming);
            if &settled == existing {
                return false;
            }
            self.versions.remove(position);
            incoming = settled;
        }
        if self.versions.iter().any(|v| incoming.is_superseded_by(v)) {
            return false;
        }
        self.versions.retain(|v| !v.is_superseded_by(&incoming));
        // Keep descending precedence without re-sorting: records with many
        // concurrent versions (hundreds of writers) stay cheap to merge.
        let position = self
            .versions
            .partition_point(|v| v.precedence(&incoming) == Ordering::Greater);
        self.versions.insert(position, incoming);
        true
    }

    /// Merges every version of `other` (same id). Returns true on change.
    pub fn merge(&mut self, other: &Record) -> bool {
        debug_assert_eq!(self.id, other.id);
        let mut changed = false;
        for version in &other.versions {
            changed |= self.merge_version(version.clone());
        }
        changed
    }

    /// Encodes as `u8 version, str id, u32 count, versions`.
    pub fn encode(&self, writer: &mut Writer) {
        writer.u8(RECORD_ENCODING_VERSION);
        writer.str(&self.id);
        writer.u32(crate::codec::len_u32(self.versions.len()));
        for version in &self.versions {
            version.encode(writer);
        }
    }

    /// The encoding as a byte vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut writer = Writer::with_capacity(self.encoded_len());
        self.encode(&mut writer);
        writer.finish()
    }

    /// The length of [`to_bytes`](Self::to_bytes)' output once every body
    /// is in memory (see [`Version::encoded_len`]).
    fn encoded_len(&self) -> usize {
        let versions: usize = self.versions.iter().map(Version::encoded_len).sum();
        1 + 4 + self.id.len() + 4 + versions
    }

    /// Decodes a record, checking every invariant: a supported version byte,
    /// a valid id, a non-empty antichain of versions in canonical order, and
    /// JSON documents.
    pub fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::decode_with(reader, JsonCheck::Validate)
    }

    /// Decodes a record this replica wrote to its own storage: every check of
    /// [`from_bytes`](Self::from_bytes) except re-validating the JSON text,
    /// which was valid when written. Cold opens of large databases are
    /// dominated by that scan otherwise.
    pub fn from_stored_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let record = Self::decode_with(&mut reader, JsonCheck::Trusted)?;
        reader.finish()?;
        Ok(record)
    }

    fn decode_with(reader: &mut Reader<'_>, check: JsonCheck) -> Result<Self, DecodeError> {
        let format = reader.u8()?;
        if format != RECORD_ENCODING_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: "record",
                found: format,
                supported: RECORD_ENCODING_VERSION,
            });
        }
        let id = reader.str()?;
        validate_id(id).map_err(|e| DecodeError::Invalid(e.to_string()))?;
        let count = reader.count(MIN_VERSION_LEN)?;
        if count == 0 {
            return Err(DecodeError::Invalid("a record has no versions".into()));
        }
        let mut versions: SmallVec<[Version; 1]> = SmallVec::with_capacity(count);
        for _ in 0..count {
            versions.push(Version::decode_with(reader, check)?);
        }
        for pair in versions.windows(2) {
            if pair[0].precedence(&pair[1]) != Ordering::Greater {
                return Err(DecodeError::Invalid(
                    "record versions are not in descending precedence order".into(),
                ));
            }
        }
        for (i, a) in versions.iter().enumerate() {
            for (j, b) in versions.iter().enumerate() {
                if i != j && a.clock.covers(&b.dot()) {
                    return Err(DecodeError::Invalid(
                        "a record holds a version superseded by another".into(),
                    ));
                }
            }
        }
        Ok(Self {
            id: id.into(),
            versions,
        })
    }

    /// Decodes a standalone encoding, rejecting trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let record = Self::decode(&mut reader)?;
        reader.finish()?;
        Ok(record)
    }
}

/// Whether decoding re-checks that document text is JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonCheck {
    /// Bytes from the network or a tool: check.
    Validate,
    /// Bytes this replica stored itself: skip the scan.
    Trusted,
}

/// Smallest possible encoded version: actor, hlc, empty clock, flags.
const MIN_VERSION_LEN: usize = ActorId::LEN + Hlc::LEN + 4 + 1;

/// One version standing for two different writes that claim the same dot:
/// the payload (timestamp, data, embedding) of the greater claim, compared by
/// encoding with the clock left out, and the pointwise maximum of both
/// clocks. Commutative, associative and idempotent, so every replica that
/// saw the same claims settles on the same version, whatever the order; and
/// since clocks only grow, whatever either claim had seen stays superseded.
fn settle_equivocation(a: &Version, b: &Version) -> Version {
    fn payload(version: &Version) -> Vec<u8> {
        let mut without_clock = version.clone();
        without_clock.set_clock(VectorClock::new());
        match &version.data {
            // A document left in storage (claims merged while a database
            // opened) is compared by its length: the database reads such a
            // record back from all its rows, where the documents settle.
            Some(Body::Stored { len, .. }) => {
                let mut bytes = Version {
                    data: None,
                    ..without_clock
                }
                .to_bytes();
                bytes.extend_from_slice(&len.to_le_bytes());
                bytes
            }
            _ => without_clock.to_bytes(),
        }
    }
    let mut settled = if payload(a) >= payload(b) {
        a.clone()
    } else {
        b.clone()
    };
    let mut clock = a.clock.clone();
    clock.merge(&b.clock);
    settled.set_clock(clock);
    settled
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("id", &self.id)
            .field("versions", &self.versions)
            .finish()
    }
}

/// A replicated operation: one version of one record, as sent between
/// replicas. Deletes are versions without data.
#[derive(Debug, Clone, PartialEq)]
pub struct CrdtOperation {
    /// The record id (shared, so batches of operations copy no strings).
    pub id: Arc<str>,
    /// The version to merge.
    pub version: Version,
}

impl CrdtOperation {
    /// True for a delete (tombstone) operation.
    pub fn is_delete(&self) -> bool {
        self.version.is_tombstone()
    }

    /// Encodes as `u8 version, str id, version`.
    pub fn encode(&self, writer: &mut Writer) {
        writer.u8(RECORD_ENCODING_VERSION);
        writer.str(&self.id);
        self.version.encode(writer);
    }

    /// The encoding as a byte vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut writer = Writer::new();
        self.encode(&mut writer);
        writer.finish()
    }

    /// The length of the encoding of version `version` of record `id`
    /// (see [`Version::encoded_len`]).
    pub fn encoded_len_of(id: &str, version: &Version) -> usize {
        1 + 4 + id.len() + version.encoded_len()
    }

    /// Decodes what [`encode`](Self::encode) wrote.
    pub fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let format = reader.u8()?;
        if format != RECORD_ENCODING_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: "operation",
                found: format,
                supported: RECORD_ENCODING_VERSION,
            });
        }
        let id = reader.str()?;
        validate_id(id).map_err(|e| DecodeError::Invalid(e.to_string()))?;
        Ok(Self {
            id: id.into(),
            version: Version::decode(reader)?,
        })
    }

    /// Decodes a standalone encoding, rejecting trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let op = Self::decode(&mut reader)?;
        reader.finish()?;
        Ok(op)
    }
}

/// Version byte of an encoded batch of operations.
pub const BATCH_ENCODING_VERSION: u8 = 1;

/// Encodes a batch of operations: `u8 version, u32 count, operations`.
pub fn encode_operations(ops: &[CrdtOperation]) -> Vec<u8> {
    let mut writer = Writer::new();
    write_operations(&mut writer, ops.len(), ops);
    writer.finish()
}

/// Appends the batch encoding of `count` operations (what `ops` yields) to
/// `writer`: for callers that frame a batch or gather it from several
/// slices without copying the operations.
pub(crate) fn write_operations<'a>(
    writer: &mut Writer,
    count: usize,
    ops: impl IntoIterator<Item = &'a CrdtOperation>,
) {
    writer.u8(BATCH_ENCODING_VERSION);
    writer.u32(crate::codec::len_u32(count));
    for op in ops {
        op.encode(writer);
    }
}

/// Decodes what [`encode_operations`] wrote.
pub fn decode_operations(bytes: &[u8]) -> Result<Vec<CrdtOperation>, DecodeError> {
    let mut reader = Reader::new(bytes);
    let format = reader.u8()?;
    if format != BATCH_ENCODING_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            what: "operation batch",
            found: format,
            supported: BATCH_ENCODING_VERSION,
        });
    }
    let count = reader.count(1 + 4 + MIN_VERSION_LEN)?;
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        ops.push(CrdtOperation::decode(&mut reader)?);
    }
    reader.finish()?;
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_found_on_bytes_exactly_as_char_is_control_finds_them() {
        for code in 0..=0x10_ffffu32 {
            let Some(c) = char::from_u32(code) else {
                continue;
            };
            for text in [format!("{c}"), format!("a{c}b"), format!("Â{c}é")] {
                assert_eq!(
                    has_control_character(&text),
                    text.chars().any(char::is_control),
                    "U+{code:04X} in {text:?}"
                );
            }
        }
        assert!(validate_id("ok/id é").is_ok());
        assert!(validate_id("tab\there").is_err());
        assert!(validate_id("next\u{85}line").is_err());
    }

    /// Two concurrent versions of `x`, one by each of two writers.
    fn concurrent_versions() -> (Record, Record) {
        use crate::crdt::{ActorId, CrdtStore};
        let mut a = CrdtStore::new(ActorId::from_bytes([1; 16]));
        let mut b = CrdtStore::new(ActorId::from_bytes([2; 16]));
        a.put(
            "x",
            Document::from_value(&serde_json::json!("a")).unwrap(),
            10,
        );
        b.put(
            "x",
            Document::from_value(&serde_json::json!("b")).unwrap(),
            20,
        );
        (
            a.record("x").unwrap().clone(),
            b.record("x").unwrap().clone(),
        )
    }

    #[test]
    fn the_encoded_length_is_worked_out_exactly_without_encoding() {
        let (from_a, from_b) = concurrent_versions();
        let mut both = from_a.clone();
        both.merge(&from_b);
        assert_eq!(both.encoded_len(), both.to_bytes().len());
        let mut versions: Vec<Version> = both.versions().to_vec();
        // A later write that saw both: a clock of two actors.
        let mut later = versions[0].clone();
        let mut clock = later.clock.clone();
        clock.merge(&versions[1].clock);
        later.set_clock(clock);
        versions.push(later.clone());
        // A delete, and a version with an embedding.
        versions.push(Version {
            data: None,
            ..later.clone()
        });
        versions.push(Version {
            embedding: Some(vec![0.5; 7].into()),
            ..later
        });
        for version in versions {
            let op = CrdtOperation {
                id: "some/id é".into(),
                version,
            };
            let bytes = op.to_bytes();
            assert_eq!(
                CrdtOperation::encoded_len_of(&op.id, &op.version),
                bytes.len()
            );
            let whole = Record::new(op.id.clone(), op.version.clone());
            assert_eq!(whole.encoded_len(), whole.to_bytes().len());
            // A body left in storage counts the length it will have.
            let mut record = Record::new(op.id.clone(), op.version.clone());
            record.leave_bodies_in_storage();
            let left = &record.versions()[0];
            assert_eq!(CrdtOperation::encoded_len_of(&op.id, left), bytes.len());
        }
    }

    #[test]
    fn bodies_left_in_storage_keep_the_place_they_were_left_at() {
        let (from_a, from_b) = concurrent_versions();
        let mut both = from_a.clone();
        both.merge(&from_b);
        assert_eq!(both.versions().len(), 2);

        let mut left = both.clone();
        assert!(left.storage_hints().is_empty(), "in memory: no place");
        left.leave_bodies_in_storage_at(7);
        assert_eq!(left.storage_hints(), vec![7], "one place, named once");
        // Leaving them again keeps the place they were left at.
        left.leave_bodies_in_storage_at(9);
        assert_eq!(left.storage_hints(), vec![7]);
        assert!(left.bodies_found_in(&both));
        assert!(
            !left.bodies_found_in(&from_a),
            "b's document is not in a's row"
        );
        assert!(
            !left.bodies_found_in(&left.clone()),
            "a row without documents"
        );

        // Versions loaded from two rows name two places.
        let (mut a_stored, mut b_stored) = (from_a.clone(), from_b.clone());
        a_stored.leave_bodies_in_storage_at(3);
        b_stored.leave_bodies_in_storage_at(5);
        a_stored.merge(&b_stored);
        let mut hints = a_stored.storage_hints();
        hints.sort_unstable();
        assert_eq!(hints, vec![3, 5]);

        // Without a hint, none is named; filled, none is left.
        let mut unplaced = both.clone();
        unplaced.leave_bodies_in_storage();
        assert!(unplaced.storage_hints().is_empty());
        assert!(left.fill_bodies(&both));
        assert!(left.is_resident() && left.storage_hints().is_empty());
        assert_eq!(left, both);
    }
}
