//! Ctrl-C / SIGTERM during a build: the build's temp dir (a multi-GiB raw working
//! copy) must not be left behind in the output dir. [`guard`] blocks SIGINT, SIGTERM
//! and SIGHUP for the process and waits for them on a thread of its own, which removes
//! every registered dir and exits 130.

use std::path::PathBuf;
use std::sync::Mutex;

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
                    if let Ok(dirs) = DIRS.lock() {
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
