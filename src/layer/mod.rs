//! The on-disk layer model.
