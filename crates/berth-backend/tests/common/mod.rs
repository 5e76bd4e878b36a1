//! What the backend's tests share.

use berth_engines::RunAs;

/// The instances' OS user when the tests run as root (PostgreSQL refuses root).
pub fn run_as() -> Option<RunAs> {
    // SAFETY: plain libc lookups; the passwd entry is read before any other call.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("berth").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "run scripts/setup.sh: the user 'berth' is missing"
    );
    Some(unsafe {
        RunAs {
            uid: (*pw).pw_uid,
            gid: (*pw).pw_gid,
        }
    })
}
