//! The cross-crate integration tests of Strata live in `all/`; this library is empty.
