//! Signal masks: the daemon blocks its termination signals before any worker thread starts
//! and takes them with `sigwait` on one thread, so they never interrupt a FUSE request.

/// Blocks `signals` in the calling thread (threads spawned later inherit the mask).
pub fn block_signals(signals: &[i32]) {
    // SAFETY: `set` is initialised by sigemptyset before use.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits for one of `signals` (which must be blocked) and returns it.
pub fn wait_signal(signals: &[i32]) -> i32 {
    // SAFETY: `set` is initialised by sigemptyset; sigwait writes one int.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
        sig
    }
}
