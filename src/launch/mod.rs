//! The container launcher: namespaces, cgroups, the container root on a union mount.
