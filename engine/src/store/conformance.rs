//! PLACEHOLDER: replaced by the store helper.
