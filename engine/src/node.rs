//! The storage node: serves wire requests from its store.
