//! Driving e2fsprogs' `debugfs` on `image?offset=BYTES`: batched command files,
//! and the error check debugfs itself does not do (it exits 0 when a command in the
//! batch failed, so every stderr line other than its version banner is an error).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::DiskError;
use crate::tools;

/// One ext4 filesystem inside a disk image, as debugfs addresses it.
#[derive(Debug, Clone)]
pub struct Debugfs {
    exe: PathBuf,
    /// `image?offset=BYTES`
    spec: String,
}

/// An entry of `ls -p`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub inode: u64,
    /// Full st_mode (type and permission bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
}

impl DirEntry {
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170000 == 0o040000
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & 0o170000 == 0o120000
    }
    pub fn is_file(&self) -> bool {
        self.mode & 0o170000 == 0o100000
    }
    pub fn kind(&self) -> &'static str {
        match self.mode & 0o170000 {
            0o040000 => "directory",
            0o120000 => "symlink",
            0o100000 => "file",
            _ => "special file",
        }
    }
}

impl Debugfs {
    pub fn new(image: &Path, offset: u64) -> Result<Debugfs, DiskError> {
        // Absolute, because batches may run in another working directory.
        let image =
            std::path::absolute(image).map_err(DiskError::io(format!("resolving {}", image.display())))?;
        let exe = tools::find(&tools::DEBUGFS)
            .map_err(|e| DiskError::Tool { tool: "debugfs", msg: e.to_string() })?;
        Ok(Debugfs { exe, spec: format!("{}?offset={offset}", image.display()) })
    }

    /// The `image?offset=BYTES` string e2fsprogs tools take.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// Run a batch of commands (`-f FILE`). With `now`, the filesystem clock is pinned
    /// (`E2FSPROGS_FAKE_TIME`) so the superblock's write time and any inode time
    /// debugfs sets itself are reproducible. Returns stdout; fails on any error line.
    /// `cwd` is where relative source paths in `write` commands resolve.
    pub fn batch(
        &self,
        script: &str,
        writable: bool,
        now: Option<u64>,
        cwd: Option<&Path>,
    ) -> Result<Vec<u8>, DiskError> {
        let mut c = super::interrupt::command(&self.exe);
        if writable {
            c.arg("-w");
        }
        c.arg("-f").arg("-").arg(&self.spec);
        if let Some(d) = cwd {
            c.current_dir(d);
        }
        let out = self.exec_script(c, script, now)?;
        let errors = error_lines(&out.stderr);
        if !errors.is_empty() {
            let op = if writable { "writing the layer" } else { "reading the filesystem" };
            return Err(DiskError::Debugfs { op, detail: summarize(&errors) });
        }
        Ok(out.stdout)
    }

    /// Run a batch fed on stdin (`-f -`): no command file exists that an interrupted
    /// or killed build could leave behind.
    fn exec_script(
        &self,
        mut c: Command,
        script: &str,
        now: Option<u64>,
    ) -> Result<std::process::Output, DiskError> {
        c.stdin(std::process::Stdio::piped());
        self.exec_with(c, now, Some(script.as_bytes().to_vec()))
    }

    fn exec(&self, c: Command, now: Option<u64>) -> Result<std::process::Output, DiskError> {
        self.exec_with(c, now, None)
    }

    fn exec_with(
        &self,
        mut c: Command,
        now: Option<u64>,
        stdin: Option<Vec<u8>>,
    ) -> Result<std::process::Output, DiskError> {
        c.env("LC_ALL", "C").env_remove("DEBUGFS_PAGER").env("PAGER", "cat");
        if let Some(t) = now {
            c.env("E2FSPROGS_FAKE_TIME", t.to_string());
        }
        let cannot = |e: std::io::Error| DiskError::Tool { tool: "debugfs", msg: format!("cannot run: {e}") };
        let out = match stdin {
            None => c.output().map_err(cannot)?,
            Some(script) => {
                let mut child = c
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(cannot)?;
                // Written on a thread of its own: debugfs answers while it reads, and
                // both pipes must be drained at the same time.
                let feeder = child
                    .stdin
                    .take()
                    .map(|mut w| std::thread::spawn(move || std::io::Write::write_all(&mut w, &script)));
                let out = child.wait_with_output().map_err(cannot)?;
                if let Some(Ok(Err(e))) = feeder.map(|t| t.join()) {
                    // debugfs exits (and closes its stdin) on a fatal error: that error,
                    // reported below, is the one to show.
                    if out.status.success() {
                        return Err(DiskError::Tool {
                            tool: "debugfs",
                            msg: format!("feeding commands: {e}"),
                        });
                    }
                }
                out
            }
        };
        if !out.status.success() {
            return Err(DiskError::Tool {
                tool: "debugfs",
                msg: format!(
                    "{} on {} ({})",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    self.spec,
                    out.status
                ),
            });
        }
        Ok(out)
    }

    /// One read-only request (`-R`), returning stdout and the error lines.
    fn request(&self, req: &str) -> Result<(Vec<u8>, Vec<String>), DiskError> {
        let mut c = super::interrupt::command(&self.exe);
        c.arg("-R").arg(req).arg(&self.spec);
        let out = self.exec(c, None)?;
        Ok((out.stdout, error_lines(&out.stderr)))
    }

    /// A file's bytes, or `None` when the path does not exist.
    pub fn cat(&self, path: &str) -> Result<Option<Vec<u8>>, DiskError> {
        check_path(path)?;
        let (out, errs) = self.request(&format!("cat {path}"))?;
        if errs.iter().any(|e| e.contains("File not found")) {
            return Ok(None);
        }
        if !errs.is_empty() {
            return Err(read_err(errs.join("\n")));
        }
        Ok(Some(out))
    }

    /// The data blocks of a file (`blocks PATH`), `None` when the path does not exist.
    pub fn blocks(&self, path: &str) -> Result<Option<Vec<u64>>, DiskError> {
        check_path(path)?;
        let (out, errs) = self.request(&format!("blocks {path}"))?;
        if errs.iter().any(|e| e.contains("File not found")) {
            return Ok(None);
        }
        if !errs.is_empty() {
            return Err(read_err(errs.join("\n")));
        }
        let text = String::from_utf8_lossy(&out);
        let bad = |w: &str| read_err(format!("blocks {path}: unexpected output {w:?}"));
        text.split_whitespace().map(|w| w.parse().map_err(|_| bad(w))).collect::<Result<_, _>>().map(Some)
    }

    /// A symlink's target.
    pub fn readlink(&self, path: &str) -> Result<Option<String>, DiskError> {
        check_path(path)?;
        let (out, errs) = self.request(&format!("stat {path}"))?;
        if errs.iter().any(|e| e.contains("File not found")) {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&out);
        if let Some(rest) = text.split("Fast link dest: \"").nth(1) {
            return Ok(rest.rsplit_once('"').map(|(t, _)| t.to_string()));
        }
        // A slow symlink keeps its target in a data block: cat reads it.
        Ok(self.cat(path)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// `ls -p` of each directory; a directory that does not exist is absent from
    /// the result.
    pub fn list(&self, dirs: &[&str]) -> Result<BTreeMap<String, Vec<DirEntry>>, DiskError> {
        let mut script = String::new();
        for d in dirs {
            check_path(d)?;
            script.push_str(&format!("ls -p {d}\n"));
        }
        let mut c = super::interrupt::command(&self.exe);
        c.arg("-f").arg("-").arg(&self.spec);
        let out = self.exec_script(c, &script, None)?;
        let errs = error_lines(&out.stderr);
        // A path that is missing, or is not a directory (a symlink, a file), lists
        // nothing; callers tell those apart from the parent's listing.
        if let Some(e) =
            errs.iter().find(|e| !e.contains("File not found") && !e.contains("inode is not a directory"))
        {
            return Err(read_err(e.clone()));
        }
        Ok(parse_listing(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// The first distinct error lines, and how many more there were: a broken filesystem makes
/// debugfs repeat one error for every command (thousands of lines for a layer with
/// embedded images), which would bury the cause.
fn summarize(errors: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut seen = std::collections::HashSet::new();
    let distinct: Vec<&String> = errors.iter().filter(|e| seen.insert(e.as_str())).collect();
    let mut out: Vec<String> = distinct.iter().take(SHOWN).map(|e| e.to_string()).collect();
    if errors.len() > out.len() {
        out.push(format!(
            "… {} more error line(s) ({} distinct)",
            errors.len() - out.len(),
            distinct.len().saturating_sub(SHOWN)
        ));
    }
    out.join("\n")
}

fn read_err(detail: String) -> DiskError {
    DiskError::Debugfs { op: "reading the filesystem", detail }
}

/// Paths debugfs cannot take through its command parser unquoted.
pub fn check_path(p: &str) -> Result<(), DiskError> {
    if p.is_empty() || p.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\'') {
        return Err(DiskError::BadPath(p.to_string()));
    }
    Ok(())
}

fn error_lines(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(str::trim)
        .filter(|l| !(l.is_empty() || l.starts_with("debugfs ") && l.ends_with(')')))
        .map(str::to_string)
        .collect()
}

/// Split `-f` output into sections by the echoed `debugfs: ls -p DIR` lines.
fn parse_listing(out: &str) -> BTreeMap<String, Vec<DirEntry>> {
    let mut map = BTreeMap::new();
    let mut cur: Option<(String, Vec<DirEntry>)> = None;
    let mut flush = |cur: &mut Option<(String, Vec<DirEntry>)>| {
        if let Some((d, v)) = cur.take() {
            // A missing directory echoes its command but lists nothing (not even ".").
            if v.iter().any(|e| e.name == ".") {
                map.insert(d, v.into_iter().filter(|e| e.name != "." && e.name != "..").collect());
            }
        }
    };
    for line in out.lines() {
        if let Some(d) = line.strip_prefix("debugfs: ls -p ") {
            flush(&mut cur);
            cur = Some((d.trim().to_string(), Vec::new()));
        } else if let (Some((_, v)), Some(e)) = (cur.as_mut(), parse_entry(line)) {
            v.push(e);
        }
    }
    flush(&mut cur);
    map
}

/// `/ino/mode/uid/gid/name/size/`
fn parse_entry(line: &str) -> Option<DirEntry> {
    let f: Vec<&str> = line.strip_prefix('/')?.strip_suffix('/')?.split('/').collect();
    if f.len() != 6 {
        return None;
    }
    Some(DirEntry {
        inode: f[0].parse().ok()?,
        mode: u32::from_str_radix(f[1], 8).ok()?,
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        name: f[4].to_string(),
        size: if f[5].is_empty() { 0 } else { f[5].parse().ok()? },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn repeated_errors_are_summarized() {
        let errors: Vec<String> =
            (0..5000).map(|i| format!("/etc/x{}: File not found by ext2_lookup", i % 30)).collect();
        let d = super::summarize(&errors);
        assert_eq!(d.lines().count(), 21, "{d}");
        assert!(d.ends_with("… 4980 more error line(s) (10 distinct)"), "{d}");
        assert_eq!(super::summarize(&errors[..2]), format!("{}\n{}", errors[0], errors[1]));
    }

    use super::*;

    #[test]
    fn listing_sections() {
        let out = "debugfs: ls -p /etc\n/12/040755/0/0/.//\n/2/040755/0/0/..//\n/13/100644/0/0/x/3/\n\
                   /14/120777/0/0/s/42/\n\ndebugfs: ls -p /nope\n";
        let m = parse_listing(out);
        assert_eq!(m.len(), 1);
        let etc = &m["/etc"];
        assert_eq!(etc.len(), 2);
        assert!(etc[0].is_file() && etc[0].size == 3 && etc[0].mode & 0o7777 == 0o644);
        assert!(etc[1].is_symlink());
    }

    #[test]
    fn banner_is_not_an_error() {
        let e = error_lines(b"debugfs 1.47.0 (5-Feb-2023)\nwrite: Ext2 file already exists \n");
        assert_eq!(e, ["write: Ext2 file already exists"]);
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert!(check_path("/etc/a b").is_err());
        assert!(check_path("/etc/\"x").is_err());
        assert!(check_path("/etc/ok-1.conf").is_ok());
    }
}
