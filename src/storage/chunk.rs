//! Chunks: many record rows packed into one stored value.
//!
//! Backends whose per-value cost dominates (IndexedDB: one structured clone
//! and one inter-process hop per value) store each commit as one chunk
//! instead of one value per record. Chunks are only ever appended, in
//! commit order; a record that changes again simply appears again in a
//! later chunk, and readers merge every row of an id (the CRDT merge makes
//! the result independent of how rows are split). Compaction later folds
//! chunks together.
//!
//! Encoding:
//!
//! ```text
//! u8   version = 1
//! u32  entry count
//! entries, each:
//!   u8   kind: 0 = row, 1 = removed (drop every earlier row of this id),
//!        2 = mergeable metadata (version vector, HLC) as of this commit
//!   u32  id (or metadata key) length, bytes (UTF-8)
//!   if row or metadata: u32 length, record encoding or metadata value
//! ```
//!
//! Metadata entries let a commit be one value: what the database's
//! metadata is follows from merging every chunk's (the merge is monotone).

use crate::codec::{Reader, Writer};
use crate::error::DecodeError;
use std::ops::Range;
use std::sync::Arc;

use crate::storage::{StoredEntry, StoredRow};

/// Version byte of the chunk encoding.
pub const CHUNK_ENCODING_VERSION: u8 = 1;

const KIND_ROW: u8 = 0;
/// Fewer bytes than any record row takes in a chunk (its kind, its id and
/// value with their lengths, and a record of one version whose clock
/// names its writer: 77 bytes at least), so a value's length bounds how
/// many rows it can hold whatever its header claims.
pub const MIN_ROW_ENTRY_BYTES: usize = 64;
const KIND_REMOVED: u8 = 1;
const KIND_META: u8 = 2;

/// One entry of a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkEntry {
    /// A record row: `(id, record encoding)`.
    Row(String, Vec<u8>),
    /// Every earlier row of this id is gone (tombstone compaction).
    Removed(String),
    /// A mergeable metadata row: `(key, value)`.
    Meta(String, Vec<u8>),
}

/// Encodes rows, removals and mergeable metadata as one chunk.
pub fn encode_chunk(
    rows: &[(String, Vec<u8>)],
    removed: &[String],
    meta: &[(String, Vec<u8>)],
) -> Vec<u8> {
    let blobs = |pairs: &[(String, Vec<u8>)]| {
        pairs
            .iter()
            .map(|(key, value)| 9 + key.len() + value.len())
            .sum::<usize>()
    };
    let size = blobs(rows) + blobs(meta) + removed.iter().map(|id| 5 + id.len()).sum::<usize>();
    let mut writer = Writer::with_capacity(5 + size);
    writer.u8(CHUNK_ENCODING_VERSION);
    writer.u32(crate::codec::len_u32(
        rows.len() + removed.len() + meta.len(),
    ));
    for (id, row) in rows {
        writer.u8(KIND_ROW).str(id).blob(row);
    }
    for id in removed {
        writer.u8(KIND_REMOVED).str(id);
    }
    for (key, value) in meta {
        writer.u8(KIND_META).str(key).blob(value);
    }
    writer.finish()
}

/// Encodes entries in the given order.
pub fn encode_entries(entries: &[ChunkEntry]) -> Vec<u8> {
    let mut writer = Writer::new();
    writer.u8(CHUNK_ENCODING_VERSION);
    writer.u32(crate::codec::len_u32(entries.len()));
    for entry in entries {
        match entry {
            ChunkEntry::Row(id, row) => writer.u8(KIND_ROW).str(id).blob(row),
            ChunkEntry::Removed(id) => writer.u8(KIND_REMOVED).str(id),
            ChunkEntry::Meta(key, value) => writer.u8(KIND_META).str(key).blob(value),
        };
    }
    writer.finish()
}

/// Decodes a chunk, appending its entries to `out` in order, as owned
/// values (what compaction re-encodes; loading walks a [`LoadedChunk`]
/// without copying rows out).
pub fn decode_chunk(bytes: Vec<u8>, out: &mut Vec<ChunkEntry>) -> Result<(), DecodeError> {
    let chunk = LoadedChunk::index(bytes)?;
    out.reserve(chunk.entries.len());
    for entry in &chunk.entries {
        let id = chunk.text(&entry.id).to_owned();
        out.push(match entry.kind {
            KIND_ROW => ChunkEntry::Row(id, chunk.bytes[entry.value.clone()].to_vec()),
            KIND_REMOVED => ChunkEntry::Removed(id),
            _ => ChunkEntry::Meta(id, chunk.bytes[entry.value.clone()].to_vec()),
        });
    }
    Ok(())
}

/// A stored value read for loading: its bytes, shared by the rows handed
/// over from it (so no row is copied out of it), and where each of its
/// entries lies.
pub struct LoadedChunk {
    bytes: Arc<Vec<u8>>,
    entries: Vec<EntrySpan>,
    /// Where the value lies, as the storage names places
    /// ([`StoredRow::hint`]).
    hint: u32,
}

/// One entry of a [`LoadedChunk`]: its kind and the byte ranges of its id
/// (checked to be UTF-8) and of its value (empty for a removal).
struct EntrySpan {
    kind: u8,
    id: Range<usize>,
    value: Range<usize>,
}

impl LoadedChunk {
    /// Finds the entries of an encoded chunk, checking its structure and
    /// that every key is UTF-8.
    pub fn index(bytes: Vec<u8>) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(&bytes);
        let version = reader.u8()?;
        if version != CHUNK_ENCODING_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: "chunk",
                found: version,
                supported: CHUNK_ENCODING_VERSION,
            });
        }
        let count = reader.count(5)?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let kind = reader.u8()?;
            let id = span_of(&mut reader)?;
            std::str::from_utf8(&bytes[id.clone()])
                .map_err(|_| DecodeError::Invalid("a chunk entry's key is not UTF-8".into()))?;
            let value = match kind {
                KIND_ROW | KIND_META => span_of(&mut reader)?,
                KIND_REMOVED => 0..0,
                other => {
                    return Err(DecodeError::Invalid(format!(
                        "unknown chunk entry kind {other}"
                    )))
                }
            };
            entries.push(EntrySpan { kind, id, value });
        }
        reader.finish()?;
        Ok(Self {
            bytes: Arc::new(bytes),
            entries,
            hint: crate::crdt::NO_HINT,
        })
    }

    /// The same chunk, its rows handed over as lying at `hint`.
    pub fn at(self, hint: u32) -> Self {
        Self { hint, ..self }
    }

    /// The ids its rows and removals name, in order.
    pub fn named_ids(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|entry| entry.kind != KIND_META)
            .map(|entry| self.text(&entry.id))
    }

    /// A value holding one record row (older formats stored a row per
    /// record, under its id).
    pub fn single_row(id: String, row: Vec<u8>) -> Self {
        let mut bytes = id.into_bytes();
        let id = 0..bytes.len();
        bytes.extend_from_slice(&row);
        let value = id.end..bytes.len();
        Self {
            bytes: Arc::new(bytes),
            entries: vec![EntrySpan {
                kind: KIND_ROW,
                id,
                value,
            }],
            hint: crate::crdt::NO_HINT,
        }
    }

    fn text(&self, range: &Range<usize>) -> &str {
        // Checked to be UTF-8 when indexed (or a String's bytes).
        std::str::from_utf8(&self.bytes[range.clone()]).unwrap_or_default()
    }
}

/// Reads a blob's length and returns its byte range, leaving the reader
/// after it.
fn span_of(reader: &mut Reader<'_>) -> Result<Range<usize>, DecodeError> {
    let start = reader.position() + 4;
    let len = reader.blob()?.len();
    Ok(start..start + len)
}

/// The live entries of a sequence of loaded values given **newest first**:
/// every record row not dropped by a removal in a newer value (or later in
/// the same one), and every metadata entry. Walking backwards, a removal is
/// met before the rows it drops, so only the removed ids are held; each
/// value is released once its last row is consumed, and rows are handed
/// over as ranges of it, not copies.
pub struct LiveEntries<I> {
    chunks: I,
    current: Option<LoadedChunk>,
    /// How many entries of `current` are still to be walked (backwards).
    left: usize,
    removed: std::collections::HashSet<String>,
}

impl<I> LiveEntries<I> {
    /// Walks `chunks`, given newest first.
    pub fn new(chunks: I) -> Self {
        Self {
            chunks,
            current: None,
            left: 0,
            removed: Default::default(),
        }
    }
}

impl<I, E> Iterator for LiveEntries<I>
where
    I: Iterator<Item = Result<LoadedChunk, E>>,
{
    type Item = Result<StoredEntry, E>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let Some(chunk) = self.current.as_ref().filter(|_| self.left > 0) else {
                match self.chunks.next()? {
                    Ok(chunk) => {
                        self.left = chunk.entries.len();
                        self.current = Some(chunk);
                    }
                    Err(error) => return Some(Err(error)),
                }
                continue;
            };
            self.left -= 1;
            let entry = &chunk.entries[self.left];
            let id = || chunk.text(&entry.id);
            match entry.kind {
                KIND_ROW if self.removed.is_empty() || !self.removed.contains(id()) => {
                    return Some(Ok(StoredEntry::Row(StoredRow::in_chunk(
                        chunk.bytes.clone(),
                        entry.id.clone(),
                        entry.value.clone(),
                        chunk.hint,
                    ))))
                }
                KIND_ROW => {}
                KIND_REMOVED => {
                    self.removed.insert(id().to_owned());
                }
                _ => {
                    return Some(Ok(StoredEntry::Meta(
                        id().to_owned(),
                        chunk.bytes[entry.value.clone()].to_vec(),
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_removals_drop_earlier_rows() {
        let meta = [("vv".to_string(), vec![7, 7])];
        let first = encode_chunk(&[("a".into(), vec![1]), ("b".into(), vec![2])], &[], &[]);
        let second = encode_chunk(&[("a".into(), vec![3])], &["b".into()], &meta);
        let third = encode_chunk(&[("b".into(), vec![4])], &[], &[]);
        // As compaction writes a partial output: its removals (which apply
        // to older chunks) first, then rows written after them.
        let folded = encode_entries(&[
            ChunkEntry::Removed("a".into()),
            ChunkEntry::Removed("c".into()),
            ChunkEntry::Row("c".into(), vec![5]),
        ]);
        let mut chunks = Vec::new();
        for chunk in [&first, &second, &third, &folded] {
            let mut entries = Vec::new();
            decode_chunk(chunk.to_vec(), &mut entries).unwrap();
            chunks.push(entries);
        }
        assert_eq!(chunks[1].len(), 3);
        assert!(chunks[1].contains(&ChunkEntry::Meta("vv".into(), vec![7, 7])));
        assert_eq!(encode_entries(&chunks[1]), second);
        let loaded = [&first, &second, &third, &folded]
            .into_iter()
            .rev()
            .map(|chunk| LoadedChunk::index(chunk.clone()).map_err(|_| ()));
        let live: Vec<StoredEntry> = LiveEntries::new(loaded).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            live,
            vec![
                row("c", &[5]),
                row("b", &[4]),
                StoredEntry::Meta("vv".into(), vec![7, 7]),
            ]
        );
        // A removal in the same commit as a row of its id drops that row.
        let same = encode_chunk(&[("d".into(), vec![6])], &["d".into()], &[]);
        let loaded = LoadedChunk::index(same).unwrap();
        assert_eq!(
            LiveEntries::new(std::iter::once(Ok::<_, ()>(loaded))).count(),
            0
        );
    }

    fn row(id: &str, bytes: &[u8]) -> StoredEntry {
        StoredEntry::Row(StoredRow::new(id.into(), bytes.to_vec()))
    }

    #[test]
    fn rows_are_handed_over_as_they_lie_in_their_chunk() {
        let chunk = encode_chunk(&[("é".into(), vec![1, 2]), ("b".into(), vec![])], &[], &[]);
        let loaded = [
            Ok::<_, ()>(LoadedChunk::index(chunk).unwrap()),
            Ok(LoadedChunk::single_row("old".into(), vec![9])),
        ];
        let live: Vec<StoredEntry> = LiveEntries::new(loaded.into_iter())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            live,
            vec![row("b", &[]), row("é", &[1, 2]), row("old", &[9])]
        );
        let StoredEntry::Row(first) = &live[1] else {
            panic!("a row")
        };
        assert_eq!((first.id(), first.bytes()), ("é", &[1u8, 2][..]));
        assert_eq!(first.clone().into_parts(), ("é".to_string(), vec![1, 2]));
    }

    #[test]
    fn an_unreadable_chunk_passes_its_error_on() {
        let chunks = vec![
            Ok(LoadedChunk::single_row("a".into(), vec![1])),
            Err("bad"),
            Ok(LoadedChunk::index(encode_chunk(&[], &[], &[])).unwrap()),
        ];
        let walked: Vec<_> = LiveEntries::new(chunks.into_iter()).collect();
        assert_eq!(walked, vec![Ok(row("a", &[1])), Err("bad")]);
    }

    #[test]
    fn malformed_chunks_are_errors() {
        let good = encode_chunk(&[("a".into(), vec![1, 2, 3])], &[], &[]);
        let refused = |bytes: &[u8]| LoadedChunk::index(bytes.to_vec()).is_err();
        for cut in 0..good.len() {
            assert!(refused(&good[..cut]));
        }
        let mut bad_kind = good.clone();
        bad_kind[5] = 9;
        assert!(refused(&bad_kind));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(refused(&trailing));
        let mut not_utf8 = good;
        not_utf8[10] = 0xff;
        assert!(refused(&not_utf8));
    }
}
