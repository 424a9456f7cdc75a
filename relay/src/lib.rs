//! relay crate (see its issue).
