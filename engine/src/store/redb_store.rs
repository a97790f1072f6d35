//! PLACEHOLDER: replaced by the store helper.
/// The redb store.
#[derive(Debug)]
pub struct RedbStore {}
