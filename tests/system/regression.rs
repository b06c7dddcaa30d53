//! One test per fixed bug.
