//! A small tmpfs mounted for one test: a real filesystem that fills up (writes beyond its size
//! fail with ENOSPC), unmounted on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a given size mounted on a fresh temp directory; unmounted (lazily, so a process
/// still holding a file in it cannot keep it busy) and removed on drop.
///
/// Mounting needs root (the project's test machines run as root); without it the test fails
/// with the reason, it is never skipped.
#[derive(Debug)]
pub struct Tmpfs {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB.
    pub fn mount(mib: u64) -> Tmpfs {
        let dir = tempfile::Builder::new().prefix("etcdbr-tmpfs-").tempdir().expect("temp dir for the mount");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        if !out.status.success() {
            panic!(
                "cannot mount a {mib} MiB tmpfs on {} (the disk-full tests need root): {}",
                dir.path().display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Tmpfs { dir, mounted: true }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the mount.
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Every file and directory left in the mount, relative to it (sorted).
    pub fn entries(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                out.push(p.strip_prefix(self.path()).unwrap_or(&p).to_path_buf());
                if p.is_dir() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
            self.mounted = false;
        }
    }
}
