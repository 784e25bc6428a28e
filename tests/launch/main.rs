//! The container launcher (`unionfs-run`) for real: namespaces, cgroups, id maps, signals,
//! rootless runs, the union root, and that nothing is left behind.

mod common;

mod basic;
mod cgroups;
mod idmap;
mod images;
mod images_store;
mod kills;
mod leaks;
mod messages;
mod rootless;
mod security;
mod signals;
mod terminal;
mod union;
