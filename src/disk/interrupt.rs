//! Temp dirs that must not outlive the process that made them (a build's is a
//! multi-GiB raw working copy):
//!
//! - Ctrl-C / SIGTERM / SIGHUP: [`guard`] blocks the signals for the process and waits
//!   for them on a thread of its own, which removes every registered dir and exits 130.
//! - SIGKILL, a crash, a power cut: nothing runs. Every dir made by [`work_dir`] holds
//!   a marker file `.owner`, locked (`flock`) by its process for as long as it lives;
//!   the kernel drops the lock when the process dies, however it dies. The next
//!   [`work_dir`] in the same parent removes each `.imgbuild-*` dir whose marker it can
//!   lock: its owner is gone. Dirs without a marker (other tools, older imgbuild) are
//!   never touched, nor are markers younger than [`GRACE`] (the instant between
//!   making a dir and locking its marker).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// When a signal arrived, the build's errors are consequences of the cleanup (files
/// vanishing under it): wait for the signal thread to exit with 130 instead of
/// reporting them.
pub fn park_if_interrupted() {
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
}

/// Start handling the signals. Call before any other thread is spawned, so every
/// thread inherits the blocked mask. Idempotent.
pub fn guard() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: plain libc calls on a locally owned, initialised sigset.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, s);
            }
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return;
            }
            std::thread::spawn(move || {
                let mut sig = 0;
                if libc::sigwait(&set, &mut sig) == 0 {
                    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
                    // Held until the process exits: a [`work_dir`] the build starts meanwhile
                    // waits for it, so no dir is made after the cleanup and left behind.
                    let dirs = DIRS.lock();
                    if let Ok(dirs) = &dirs {
                        // The build keeps running meanwhile and may recreate paths
                        // under a dir being removed: retry until it stays gone.
                        for d in dirs.iter() {
                            for _ in 0..200 {
                                let _ = std::fs::remove_dir_all(d);
                                if !d.exists() {
                                    break;
                                }
                                std::thread::sleep(std::time::Duration::from_millis(2));
                            }
                        }
                    }
                    crate::reporter::always("interrupted; temporary files removed");
                    std::process::exit(130);
                }
            });
        }
    });
}

/// Remove `dir` if the process is interrupted (until [`forget`]).
pub fn register(dir: PathBuf) {
    if let Ok(mut d) = DIRS.lock() {
        d.push(dir);
    }
}

pub fn forget(dir: &std::path::Path) {
    if let Ok(mut d) = DIRS.lock() {
        d.retain(|x| x != dir);
    }
}

/// Prefix of every temp dir imgbuild makes next to outputs and images.
pub const PREFIX: &str = ".imgbuild-";
/// The marker file of a [`WorkDir`], locked by its owner.
const OWNER: &str = ".owner";
/// A marker younger than this is never taken for a dead owner's.
pub const GRACE: Duration = Duration::from_secs(10);

/// A temp dir owned by this process: removed when dropped, on SIGINT/SIGTERM/SIGHUP
/// (with [`guard`]), and by a later [`work_dir`] once this process is gone.
#[derive(Debug)]
pub struct WorkDir {
    dir: Option<tempfile::TempDir>,
    /// Holds the lock on the marker while the dir is in use.
    _owner: File,
}

impl WorkDir {
    pub fn path(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).unwrap_or(Path::new(""))
    }

    /// Remove the dir now, reporting failure.
    pub fn close(mut self) -> std::io::Result<()> {
        match self.dir.take() {
            Some(d) => {
                forget(d.path());
                d.close()
            }
            None => Ok(()),
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            forget(d.path());
        }
    }
}

/// A fresh `PREFIX<kind>XXXXXX` dir in `parent`, owned by this process; first removes
/// the `.imgbuild-*` dirs in `parent` whose owner died (returned, for the caller to say).
pub fn work_dir(parent: &Path, kind: &str) -> std::io::Result<(WorkDir, Vec<PathBuf>)> {
    let swept = sweep(parent);
    // Made and registered under the lock the signal thread takes for the cleanup: a dir
    // is either registered before the cleanup runs or never made.
    let mut dirs = DIRS.lock().map_err(|_| std::io::Error::other("the temp dir registry is poisoned"))?;
    let dir = tempfile::Builder::new().prefix(&format!("{PREFIX}{kind}")).tempdir_in(parent)?;
    dirs.push(dir.path().to_path_buf());
    drop(dirs);
    let owner = File::create(dir.path().join(OWNER))?;
    owner.lock()?;
    Ok((WorkDir { dir: Some(dir), _owner: owner }, swept))
}

/// Remove the `.imgbuild-*` dirs in `parent` whose owner is gone (see the module docs).
pub fn sweep(parent: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else { return Vec::new() };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let named = e.file_name().to_str().is_some_and(|n| n.starts_with(PREFIX));
        // Never follows a symlink: only real directories of ours are candidates.
        if !named || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let marker = path.join(OWNER);
        let Ok(meta) = std::fs::symlink_metadata(&marker) else { continue };
        let young = meta.modified().ok().and_then(|m| m.elapsed().ok()).is_none_or(|age| age < GRACE);
        if !meta.file_type().is_file() || young {
            continue;
        }
        let Ok(f) = File::open(&marker) else { continue };
        if f.try_lock().is_ok() && std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// Unblock the guarded signals in a child before it execs (the signal mask is
/// inherited), so Ctrl-C still stops qemu-img or debugfs.
pub fn command(exe: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new(exe);
    // SAFETY: the closure only calls async-signal-safe functions (sigemptyset,
    // sigaddset, pthread_sigmask) on a local set between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backdate(p: &Path) {
        let old = std::time::SystemTime::now() - 2 * GRACE;
        File::options().write(true).open(p).unwrap().set_modified(old).unwrap();
    }

    /// Only dirs whose marker nobody holds, old enough, are removed: not a live
    /// owner's, not a fresh one's, not one without a marker.
    #[test]
    fn sweep_removes_only_dead_owners_dirs() {
        let parent = tempfile::tempdir().unwrap();
        let (live, _) = work_dir(parent.path(), "").unwrap();
        backdate(&live.path().join(OWNER));
        let dead = parent.path().join(".imgbuild-dead");
        std::fs::create_dir_all(dead.join("sub")).unwrap();
        std::fs::write(dead.join(OWNER), b"").unwrap();
        std::fs::write(dead.join("sub/disk.raw"), b"big").unwrap();
        backdate(&dead.join(OWNER));
        let fresh = parent.path().join(".imgbuild-fresh");
        std::fs::create_dir_all(&fresh).unwrap();
        std::fs::write(fresh.join(OWNER), b"").unwrap();
        let unmarked = parent.path().join(".imgbuild-other-tool");
        std::fs::create_dir_all(&unmarked).unwrap();
        let foreign = parent.path().join("not-ours");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join(OWNER), b"").unwrap();
        backdate(&foreign.join(OWNER));

        assert_eq!(sweep(parent.path()), vec![dead.clone()]);
        assert!(!dead.exists());
        for kept in [live.path(), &fresh, &unmarked, &foreign] {
            assert!(kept.exists(), "{}", kept.display());
        }
        let p = live.path().to_path_buf();
        live.close().unwrap();
        assert!(!p.exists());
    }
}
