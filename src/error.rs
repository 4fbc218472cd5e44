//! Errors: one enum per layer and the umbrella [`Error`] that the public API
//! returns. No dependency's error type (rusqlite, `JsValue`, IndexedDB DOM
//! exceptions) leaks out: each is turned into a variant with a message that
//! says what happened and what to do.

use std::fmt;

/// A byte string could not be decoded. Decoders return this for every
/// malformed input; they never panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before a value was complete.
    #[error("input ended early: {needed} more bytes needed at offset {offset}")]
    UnexpectedEnd {
        /// Where the missing value starts.
        offset: usize,
        /// How many bytes were needed.
        needed: usize,
    },
    /// The encoding's version byte is not one this build can read.
    #[error("unsupported {what} encoding version {found} (this build reads up to {supported}); upgrade PluresDB to read it")]
    UnsupportedVersion {
        /// Which encoding.
        what: &'static str,
        /// The version found.
        found: u8,
        /// The newest version this build reads.
        supported: u8,
    },
    /// A length or count exceeds what the decoder accepts.
    #[error("{what} is too large: {len} (at most {max})")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its declared size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A string was not valid UTF-8.
    #[error("invalid UTF-8 in a string at offset {offset}")]
    InvalidUtf8 {
        /// Where the string starts.
        offset: usize,
    },
    /// Bytes remained after the value was complete.
    #[error("{count} unexpected trailing bytes")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// A field holds a value the format does not allow.
    #[error("invalid encoding: {0}")]
    Invalid(String),
}

/// Input that the database refuses, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// Record ids must be non-empty UTF-8 of bounded length.
    #[error("invalid record id: {0}")]
    InvalidId(String),
    /// The value is not a JSON document PluresDB can store.
    #[error("invalid document: {0}")]
    InvalidDocument(String),
    /// A document, batch or frame exceeds a size limit.
    #[error("{what} is too large: {size} bytes (the limit is {limit} bytes)")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// An option or argument has an invalid value.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Storage backend failures (IndexedDB, SQLite, memory).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The browser or disk refused the write for lack of space. Nothing of the
    /// failed transaction was written; earlier data is intact.
    #[error(
        "storage quota exceeded: {0}. Free space (delete records or other site data) and retry"
    )]
    QuotaExceeded(String),
    /// The database was written by a newer format than this build reads.
    #[error("the database uses format version {found}, newer than the {supported} this build reads; upgrade PluresDB to open it")]
    FormatTooNew {
        /// The stored format version.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// Another connection (an older tab) blocks a schema upgrade.
    #[error("the database upgrade is blocked by another open connection: close other tabs using this database and retry")]
    UpgradeBlocked,
    /// A stored row could not be decoded.
    #[error("corrupt row `{key}` in store `{store}`: {reason}")]
    Corrupt {
        /// The object store or table.
        store: String,
        /// The row key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The connection to the backend was lost and a retry failed too.
    #[error("the storage connection was lost: {0}")]
    ConnectionLost(String),
    /// The database has been closed.
    #[error("the database is closed")]
    Closed,
    /// A streamed commit's rows stopped before the last one; nothing of it
    /// was written.
    #[error("the batch ended before all of its rows were sent; nothing of it was written")]
    IncompleteBatch,
    /// Any other backend failure, with the backend's message.
    #[error("storage failure: {0}")]
    Backend(String),
}

/// The umbrella error of the public API.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad input from the caller.
    #[error(transparent)]
    Input(#[from] InputError),
    /// Bad bytes from a disk or a wire.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The storage backend failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A vector was refused or a search was malformed.
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
    /// The embedder failed or is missing.
    #[error("embedder: {0}")]
    Embedder(String),
    /// An internal invariant failed; the instance should be reopened.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The stable error name used by the JavaScript API (`error.name`) and
    /// the HTTP API's error code.
    pub fn name(&self) -> ErrorName {
        match self {
            Error::Input(InputError::TooLarge { .. }) => ErrorName::TooLarge,
            Error::Input(_) => ErrorName::InvalidInput,
            Error::Decode(_) => ErrorName::Corrupt,
            Error::Storage(StorageError::QuotaExceeded(_)) => ErrorName::QuotaExceeded,
            Error::Storage(StorageError::FormatTooNew { .. }) => ErrorName::FormatVersion,
            Error::Storage(StorageError::Corrupt { .. }) => ErrorName::Corrupt,
            Error::Storage(StorageError::Closed) => ErrorName::Closed,
            Error::Storage(StorageError::UpgradeBlocked) => ErrorName::UpgradeBlocked,
            Error::Storage(_) => ErrorName::Storage,
            Error::Index(crate::index::IndexError::DimensionMismatch { .. }) => {
                ErrorName::DimensionMismatch
            }
            Error::Index(_) => ErrorName::InvalidInput,
            Error::Embedder(_) => ErrorName::Embedder,
            Error::Internal(_) => ErrorName::Generic,
        }
    }
}

/// Stable names for error kinds, shared by the JS and HTTP APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorName {
    /// Anything without a more specific name.
    Generic,
    /// Bad input from the caller.
    InvalidInput,
    /// A size limit was exceeded.
    TooLarge,
    /// Storage quota exceeded.
    QuotaExceeded,
    /// Database format newer than this build.
    FormatVersion,
    /// Corrupt stored or received bytes.
    Corrupt,
    /// The database is closed.
    Closed,
    /// A schema upgrade is blocked by another open connection.
    UpgradeBlocked,
    /// A vector of the wrong dimension.
    DimensionMismatch,
    /// The embedder failed or is missing.
    Embedder,
    /// Other storage failures.
    Storage,
}

impl ErrorName {
    /// The JavaScript `Error.name`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorName::Generic => "PluresDBError",
            ErrorName::InvalidInput => "InvalidInputError",
            ErrorName::TooLarge => "TooLargeError",
            ErrorName::QuotaExceeded => "QuotaExceededError",
            ErrorName::FormatVersion => "FormatVersionError",
            ErrorName::Corrupt => "CorruptDataError",
            ErrorName::Closed => "ClosedError",
            ErrorName::UpgradeBlocked => "UpgradeBlockedError",
            ErrorName::DimensionMismatch => "DimensionMismatchError",
            ErrorName::Embedder => "EmbedderError",
            ErrorName::Storage => "StorageError",
        }
    }
}

impl fmt::Display for ErrorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Result with the umbrella error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
