//! OCI images for the launcher: reading an image layout ([`layout`]) with every digest
//! checked ([`digest`]), and the layer store ([`store`]) that unpacks each layer once and
//! keeps the records of images and named containers ([`records`]).
//!
//! The unpacking itself is `oci::import` (whiteouts, refusal of hostile paths, device nodes,
//! owners); this module adds what an image needs around it: which blobs, their checks, the
//! store's names, staging and locks.

pub mod digest;
pub mod layout;
pub mod records;
pub mod store;

pub use digest::Digest;
pub use layout::{Image, RunConfig};
pub use records::{check_name, ContainerRecord, ImageRecord};
pub use store::{InUse, Locked, Store, STORE_ENV};
