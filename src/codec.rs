//! Byte-level building blocks for every encoding that crosses a disk or a
//! wire: fixed-width little-endian integers, length-prefixed byte strings and
//! a bounds-checked reader that returns [`DecodeError`] instead of panicking.
//!
//! Lengths are `u32` on the wire whatever the platform's `usize`.

use crate::error::DecodeError;

/// Largest byte string any decoder accepts (64 MiB): a corrupt length prefix
/// must not make a decoder allocate gigabytes.
pub const MAX_BLOB_LEN: u32 = 64 * 1024 * 1024;

/// Appends fixed-width little-endian values to a byte vector.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// Appends one byte.
    pub fn u8(&mut self, value: u8) -> &mut Self {
        self.buf.push(value);
        self
    }

    /// Appends a little-endian `u16`.
    pub fn u16(&mut self, value: u16) -> &mut Self {
        self.buf.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Appends a little-endian `u32`.
    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.buf.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Appends a little-endian `u64`.
    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.buf.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Appends a little-endian IEEE-754 `f32`.
    pub fn f32(&mut self, value: f32) -> &mut Self {
        self.buf.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Appends raw bytes with no length prefix.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// Appends a `u32` length followed by the bytes.
    ///
    /// # Panics
    /// When `bytes` is longer than `u32::MAX`; callers bound their inputs far
    /// below that.
    pub fn blob(&mut self, bytes: &[u8]) -> &mut Self {
        self.u32(len_u32(bytes.len()));
        self.raw(bytes)
    }

    /// Appends a UTF-8 string as a blob.
    pub fn str(&mut self, value: &str) -> &mut Self {
        self.blob(value.as_bytes())
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The encoded bytes.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Converts an in-memory length to its wire width.
///
/// # Panics
/// When `len` exceeds `u32::MAX` (4 GiB), which no encoder here produces.
pub fn len_u32(len: usize) -> u32 {
    u32::try_from(len).expect("length exceeds the u32 wire limit")
}

/// Reads fixed-width little-endian values, never past the end of its input.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`, positioned at the start.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    /// Offset of the next byte to read.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Reads exactly `len` bytes.
    pub fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < len {
            return Err(DecodeError::UnexpectedEnd {
                offset: self.position,
                needed: len,
            });
        }
        let slice = &self.bytes[self.position..self.position + len];
        self.position += len;
        Ok(slice)
    }

    /// Reads a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    /// Reads a little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `f32`.
    pub fn f32(&mut self) -> Result<f32, DecodeError> {
        Ok(f32::from_le_bytes(self.array()?))
    }

    /// Reads a `u32` count and checks that at least `count * min_item_len`
    /// bytes remain, so a corrupt count cannot trigger a huge allocation.
    pub fn count(&mut self, min_item_len: usize) -> Result<usize, DecodeError> {
        let count = self.u32()? as usize;
        let needed = count.saturating_mul(min_item_len.max(1));
        if needed > self.remaining() {
            return Err(DecodeError::UnexpectedEnd {
                offset: self.position,
                needed,
            });
        }
        Ok(count)
    }

    /// Reads a `u32`-length-prefixed byte string.
    pub fn blob(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()?;
        if len > MAX_BLOB_LEN {
            return Err(DecodeError::TooLarge {
                what: "byte string",
                len: u64::from(len),
                max: u64::from(MAX_BLOB_LEN),
            });
        }
        self.take(len as usize)
    }

    /// Reads a length-prefixed UTF-8 string.
    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        let offset = self.position;
        std::str::from_utf8(self.blob()?).map_err(|_| DecodeError::InvalidUtf8 { offset })
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                count: self.remaining(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_width() {
        let mut writer = Writer::new();
        writer
            .u8(7)
            .u16(0xBEEF)
            .u32(0xDEAD_BEEF)
            .u64(u64::MAX - 1)
            .f32(1.5)
            .str("héllo");
        let bytes = writer.finish();
        let mut reader = Reader::new(&bytes);
        assert_eq!(reader.u8().unwrap(), 7);
        assert_eq!(reader.u16().unwrap(), 0xBEEF);
        assert_eq!(reader.u32().unwrap(), 0xDEAD_BEEF);
        assert_eq!(reader.u64().unwrap(), u64::MAX - 1);
        assert_eq!(reader.f32().unwrap(), 1.5);
        assert_eq!(reader.str().unwrap(), "héllo");
        reader.finish().unwrap();
    }

    #[test]
    fn short_input_is_an_error_not_a_panic() {
        let mut reader = Reader::new(&[1, 2, 3]);
        assert!(matches!(
            reader.u32(),
            Err(DecodeError::UnexpectedEnd { needed: 4, .. })
        ));
        let mut reader = Reader::new(&[0xff, 0xff, 0xff, 0x7f]);
        assert!(reader.count(16).is_err());
        let mut reader = Reader::new(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(reader.blob(), Err(DecodeError::TooLarge { .. })));
    }
}
