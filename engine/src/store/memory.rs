//! PLACEHOLDER: replaced by the store helper.
use super::*;
/// An in-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {}
