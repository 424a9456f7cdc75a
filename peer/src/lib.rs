//! peer crate (see its issue).
