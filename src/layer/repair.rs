//! What a mount does first with the copy-ups an earlier mount renamed into the upper before
//! flushing them (`behind`) and never flushed: a record left from this boot is a daemon that
//! died (`kill -9`), whose copy the page cache still holds with every write to it: it is
//! flushed. A record from an earlier boot is a machine crash: the copy may have lost data, so
//! it is made again from its lower file (which never changes) and flushed, and the file is
//! what it was right after that copy-up. Either way the upper is whole before anything is
//! served.

use std::ffi::CString;
use std::os::fd::AsFd;

use crate::layer::behind::{self, Record};
use crate::layer::copyup::{self, CopyData};
use crate::layer::stack::{remove_tree, split, Stack};
use crate::sys::{self, Errno, SysResult};

/// Makes whole every copy with a record left in the work dir, then drops the records.
pub fn repair_unflushed(stack: &Stack) {
    let Ok(work) = stack.work() else { return };
    let records = behind::record_names(stack);
    if records.is_empty() {
        return;
    }
    let boot = behind::boot_id();
    for rec in records {
        match behind::read_record(stack, &rec) {
            // Cut short: written before its copy was renamed in, so that never happened.
            Ok(None) => {}
            Ok(Some(r)) => {
                if let Err(err) = repair_one(stack, &r, &boot) {
                    log::warn!(
                        "upper file {} was copied up by a mount that ended before flushing it, \
                         and could not be made whole ({err}): after a machine crash it may be \
                         short; compare it with its lower layer's copy, or remove it from the \
                         upper to show that copy again",
                        String::from_utf8_lossy(&r.rel)
                    );
                }
            }
            Err(err) => log::warn!(
                "record {} of a copy-up not yet flushed could not be read ({err}): it is \
                 dropped; a file copied up just before a crash may be short",
                String::from_utf8_lossy(rec.to_bytes())
            ),
        }
        let _ = remove_tree(work, &rec);
    }
    let _ = behind::flush_work_dir(stack);
}

fn repair_one(stack: &Stack, r: &Record, boot: &[u8]) -> SysResult<()> {
    let (parent_rel, name) = split(&r.rel);
    let cname = CString::new(name).map_err(|_| Errno::EINVAL)?;
    let Ok(parent) = stack.open_rel(0, parent_rel, libc::O_PATH | libc::O_DIRECTORY) else {
        return Ok(()); // never renamed in
    };
    if !boot.is_empty() && r.boot == boot {
        // The daemon died, the machine did not: the page cache has it all.
        return match sys::openat(parent.as_fd(), &cname, libc::O_RDONLY | libc::O_NOFOLLOW, 0) {
            Ok(f) => stack.flush(f.as_fd()),
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e),
        };
    }
    // The lower file must still be there before the suspect copy goes.
    let src_dir = stack.open_rel(r.layer, parent_rel, libc::O_PATH | libc::O_DIRECTORY)?;
    sys::fstatat(src_dir.as_fd(), &cname)?;
    let before = sys::fstat(parent.as_fd())?;
    match sys::unlinkat(parent.as_fd(), &cname, false) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e),
    }
    copyup::copy_up_entry(stack, parent_rel, name, r.layer, CopyData::Full)?;
    sys::restore_times(parent.as_fd(), &before);
    Ok(())
}
