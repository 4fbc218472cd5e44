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
use crate::storage::StoredEntry;

/// Version byte of the chunk encoding.
pub const CHUNK_ENCODING_VERSION: u8 = 1;

const KIND_ROW: u8 = 0;
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

/// Decodes a chunk, appending its entries to `out` in order.
pub fn decode_chunk(bytes: &[u8], out: &mut Vec<ChunkEntry>) -> Result<(), DecodeError> {
    let mut reader = Reader::new(bytes);
    let version = reader.u8()?;
    if version != CHUNK_ENCODING_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            what: "chunk",
            found: version,
            supported: CHUNK_ENCODING_VERSION,
        });
    }
    let count = reader.count(5)?;
    out.reserve(count);
    for _ in 0..count {
        let kind = reader.u8()?;
        let id = reader.str()?.to_owned();
        match kind {
            KIND_ROW => out.push(ChunkEntry::Row(id, reader.blob()?.to_vec())),
            KIND_REMOVED => out.push(ChunkEntry::Removed(id)),
            KIND_META => out.push(ChunkEntry::Meta(id, reader.blob()?.to_vec())),
            other => {
                return Err(DecodeError::Invalid(format!(
                    "unknown chunk entry kind {other}"
                )))
            }
        }
    }
    reader.finish()
}

/// What is live in a store of chunks, walked newest first: rows that no
/// newer removal of their id dropped, and every metadata entry (a
/// removal drops the rows before it, in its own chunk and older ones, and
/// none after it). Each chunk's entries are given in commit order; chunks
/// newest first, so that a removal is met before the rows it drops and
/// nothing needs to be held but the ids removed.
pub struct LiveEntries<I> {
    chunks: I,
    /// The entries of the chunk being walked, last first.
    current: std::iter::Rev<std::vec::IntoIter<ChunkEntry>>,
    removed: std::collections::HashSet<String>,
}

impl<I> LiveEntries<I> {
    /// Walks `chunks` (newest first, each in commit order).
    pub fn new(chunks: I) -> Self {
        Self {
            chunks,
            current: Vec::new().into_iter().rev(),
            removed: Default::default(),
        }
    }
}

impl<I, E> Iterator for LiveEntries<I>
where
    I: Iterator<Item = Result<Vec<ChunkEntry>, E>>,
{
    type Item = Result<StoredEntry, E>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.current.next() {
                Some(ChunkEntry::Row(id, row)) if !self.removed.contains(&id) => {
                    return Some(Ok(StoredEntry::Row(id, row)))
                }
                Some(ChunkEntry::Row(..)) => {}
                Some(ChunkEntry::Removed(id)) => {
                    self.removed.insert(id);
                }
                Some(ChunkEntry::Meta(key, value)) => {
                    return Some(Ok(StoredEntry::Meta(key, value)))
                }
                None => match self.chunks.next()? {
                    Ok(entries) => self.current = entries.into_iter().rev(),
                    Err(error) => return Some(Err(error)),
                },
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
            decode_chunk(chunk, &mut entries).unwrap();
            chunks.push(entries);
        }
        assert_eq!(chunks[1].len(), 3);
        assert!(chunks[1].contains(&ChunkEntry::Meta("vv".into(), vec![7, 7])));
        assert_eq!(encode_entries(&chunks[1]), second);
        let live: Vec<StoredEntry> = LiveEntries::new(chunks.into_iter().rev().map(Ok::<_, ()>))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            live,
            vec![
                StoredEntry::Row("c".into(), vec![5]),
                StoredEntry::Row("b".into(), vec![4]),
                StoredEntry::Meta("vv".into(), vec![7, 7]),
            ]
        );
        // A removal in the same commit as a row of its id drops that row.
        let same = encode_chunk(&[("d".into(), vec![6])], &["d".into()], &[]);
        let mut entries = Vec::new();
        decode_chunk(&same, &mut entries).unwrap();
        assert_eq!(
            LiveEntries::new(std::iter::once(Ok::<_, ()>(entries))).count(),
            0
        );
    }

    #[test]
    fn an_unreadable_chunk_passes_its_error_on() {
        let chunks = vec![
            Ok(vec![ChunkEntry::Row("a".into(), vec![1])]),
            Err("bad"),
            Ok(vec![]),
        ];
        let walked: Vec<_> = LiveEntries::new(chunks.into_iter()).collect();
        assert_eq!(
            walked,
            vec![Ok(StoredEntry::Row("a".into(), vec![1])), Err("bad")]
        );
    }

    #[test]
    fn malformed_chunks_are_errors() {
        let good = encode_chunk(&[("a".into(), vec![1, 2, 3])], &[], &[]);
        for cut in 0..good.len() {
            assert!(decode_chunk(&good[..cut], &mut Vec::new()).is_err());
        }
        let mut bad_kind = good.clone();
        bad_kind[5] = 9;
        assert!(decode_chunk(&bad_kind, &mut Vec::new()).is_err());
        let mut trailing = good;
        trailing.push(0);
        assert!(decode_chunk(&trailing, &mut Vec::new()).is_err());
    }
}
