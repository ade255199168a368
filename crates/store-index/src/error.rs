//! The crate's error type, [`IndexError`].

use crate::record::RecordKind;

/// Errors of decoding identifiers and records, and of building records from bad parts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// A hex identifier was not exactly 64 hex digits.
    #[error("invalid hex identifier {input:?}: expected exactly 64 hex digits")]
    InvalidHex {
        /// The rejected input (truncated to 80 characters).
        input: String,
    },
    /// A record was written by another format version of the store.
    #[error(
        "{kind} record has format version {found}, this build reads version {expected}: upgrade required"
    )]
    Incompatible {
        /// Which record.
        kind: RecordKind,
        /// The version found on disk.
        found: u32,
        /// The version this build reads and writes.
        expected: u32,
    },
    /// A record failed its magic, length, checksum or structural checks.
    #[error("corrupted {kind} record: {reason}")]
    Corrupted {
        /// Which record.
        kind: RecordKind,
        /// What was wrong.
        reason: String,
    },
    /// A record could not be encoded.
    #[error("cannot encode {kind} record: {reason}")]
    Encode {
        /// Which record.
        kind: RecordKind,
        /// Why.
        reason: String,
    },
    /// A constructor was given parts that break the record's invariants (the same checks that
    /// make a decoded record [`Corrupted`](Self::Corrupted)).
    #[error("invalid {kind} record: {reason}")]
    Invalid {
        /// Which record.
        kind: RecordKind,
        /// Which invariant failed.
        reason: &'static str,
    },
}
