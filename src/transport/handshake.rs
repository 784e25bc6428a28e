//! The FUSE_INIT handshake, the one request fuser reads for us: it settles the connection's
//! features with the kernel (`UnionFs::negotiate`) and whether the io_uring transport serves
//! the requests that follow (marked in the connection; `attach` then hands it to the
//! workers), the `/dev/fuse` pool otherwise.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuser::{Filesystem, InitFlags, KernelConfig, Request};

use super::conn::{Conn, Settle};
use super::Uring;

/// What fuser's session calls for FUSE_INIT (and nothing else: it never runs the session).
#[derive(Debug)]
pub struct Handshake {
    conn: Arc<Conn>,
    uring: Uring,
}

impl Handshake {
    /// The handshake of `conn`, taking the ring as `uring` says.
    pub fn new(conn: Arc<Conn>, uring: Uring) -> Self {
        Handshake { conn, uring }
    }
}

impl Filesystem for Handshake {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.conn.fs.negotiate(config);
        let offered = config
            .capabilities()
            .contains(InitFlags::FUSE_OVER_IO_URING);
        // Probed on a throwaway thread, so only where the ring is on offer.
        let hand_over = self.uring != Uring::Off && offered && super::ring::can_hand_over();
        let take = match self.uring {
            Uring::Off => {
                log::info!("transport: /dev/fuse (uring=off)");
                false
            }
            _ if !offered => {
                log::info!(
                    "transport: /dev/fuse (the kernel does not offer io_uring: \
                     echo 1 > /sys/module/fuse/parameters/enable_uring)"
                );
                false
            }
            Uring::Auto if !hand_over => {
                // Callers then hop to another CPU on every reply: measured 32 us a round
                // trip against 17 over /dev/fuse (README, Performance).
                log::info!(
                    "transport: /dev/fuse (io_uring offered, but without CAP_SYS_NICE its \
                     workers cannot keep callers on their CPU; -o uring=on takes it anyway)"
                );
                false
            }
            _ => {
                let _ = config.add_capabilities(InitFlags::FUSE_INIT_EXT);
                config
                    .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                    .is_ok()
            }
        };
        if take {
            // The workers register once the mount says the kernel has our INIT reply (see
            // `attach`); until every queue has an entry the kernel holds requests back.
            let settle = Settle::default();
            settle.hand_over.store(hand_over, Ordering::Relaxed);
            let _ = self.conn.ring.set(Arc::new(settle));
        }
        Ok(())
    }
}
