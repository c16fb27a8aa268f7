//! Raw system calls' results as `io::Result`, for the code that runs between `fork` and
//! `exec` (no allocation there).

use std::io;

use libc::c_int;

/// `Err(errno)` for a negative result.
pub(crate) fn check(result: c_int) -> io::Result<()> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
