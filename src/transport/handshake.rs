//! The FUSE_INIT handshake, the one request fuser reads for us: it settles the connection's
//! features with the kernel (`UnionFs::negotiate`) and whether the io_uring transport serves
//! the requests that follow (`ring`); `dev` readers serve them otherwise.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use fuser::{Filesystem, InitFlags, KernelConfig, Request};

use super::ring::RingStart;
use super::Uring;
use crate::fs::UnionFs;

/// What fuser's session calls for FUSE_INIT (and nothing else: it never runs the session).
pub struct Handshake {
    fs: Arc<UnionFs>,
    /// The connection's device, for the ring's registrations.
    dev: Arc<OwnedFd>,
    uring: Uring,
    /// Where the ring workers report their registration to the mount.
    ring: Arc<RingStart>,
}

impl Handshake {
    /// The handshake of `fs` on the connection `dev`, taking the ring as `uring` says; ring
    /// workers report their start to `ring`.
    pub fn new(fs: Arc<UnionFs>, dev: Arc<OwnedFd>, uring: Uring, ring: Arc<RingStart>) -> Self {
        Handshake {
            fs,
            dev,
            uring,
            ring,
        }
    }
}

impl Filesystem for Handshake {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.fs.negotiate(config);
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
            // `RingStart`); until every queue has an entry the kernel holds requests back.
            super::ring::start(
                Arc::clone(&self.fs),
                Arc::clone(&self.dev),
                hand_over,
                Arc::clone(&self.ring),
            );
        }
        Ok(())
    }
}
