//! A folder written all at once: its files are written into a hidden sibling folder, which is
//! renamed to the target only when everything succeeded. A failure (an error or a panic) removes
//! the sibling, so the target is either absent or complete, never half written. A process killed
//! mid-write leaves the hidden sibling (`.<name>.partial-<pid>`), never the target.
//!
//! The sibling lives in the target's parent because rename is only atomic within one file system.

use super::atomic::sync_dir;
use crate::MemtuneError;
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

pub struct StagedDir {
    staging: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl StagedDir {
    /// Start writing `target`, which must not exist or be an empty folder.
    pub fn new(target: &Path) -> Result<Self> {
        refuse_non_empty(target)?;
        let name = target.file_name().with_context(|| format!("{} does not name a folder", target.display()))?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
        let staging = parent.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        if staging.exists() {
            // Left by an earlier process with our pid that was killed: nothing to keep.
            fs::remove_dir_all(&staging).with_context(|| format!("cannot remove stale {}", staging.display()))?;
        }
        fs::create_dir(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
        Ok(Self { staging, target: target.to_path_buf(), committed: false })
    }

    /// Where to write the folder's files until `commit`.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Move the staged folder to the target.
    pub fn commit(mut self) -> Result<PathBuf> {
        sync_dir(&self.staging)?;
        refuse_non_empty(&self.target)?;
        if self.target.exists() {
            // An empty folder: rename does not replace directories on every platform.
            fs::remove_dir(&self.target).with_context(|| format!("cannot replace empty {}", self.target.display()))?;
        }
        fs::rename(&self.staging, &self.target)
            .with_context(|| format!("cannot rename {} to {}", self.staging.display(), self.target.display()))?;
        self.committed = true;
        if let Some(parent) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(self.target.clone())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

fn refuse_non_empty(target: &Path) -> Result<()> {
    if target.exists() {
        let non_empty =
            !target.is_dir() || fs::read_dir(target).with_context(|| format!("cannot list {}", target.display()))?.next().is_some();
        if non_empty {
            return Err(MemtuneError::Other(format!(
                "{} already exists and is not an empty folder; choose another output or remove it",
                target.display()
            ))
            .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_moves_everything_and_failure_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("out");
        let s = StagedDir::new(&target).unwrap();
        fs::write(s.path().join("a.txt"), b"a").unwrap();
        assert!(!target.exists(), "nothing appears before commit");
        s.commit().unwrap();
        assert_eq!(fs::read(target.join("a.txt")).unwrap(), b"a");

        let other = d.path().join("failed");
        {
            let s = StagedDir::new(&other).unwrap();
            fs::write(s.path().join("half.bin"), b"x").unwrap();
        } // dropped without commit: an error path
        assert!(!other.exists());
        let left: Vec<_> = fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("out")], "no staging folder left behind");
    }

    #[test]
    fn refuses_a_non_empty_target_but_takes_an_empty_one() {
        let d = tempfile::tempdir().unwrap();
        let full = d.path().join("full");
        fs::create_dir(&full).unwrap();
        fs::write(full.join("x"), b"x").unwrap();
        let err = StagedDir::new(&full).err().unwrap().to_string();
        assert!(err.contains("already exists") && err.contains("full"), "{err}");
        let empty = d.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let s = StagedDir::new(&empty).unwrap();
        fs::write(s.path().join("f"), b"f").unwrap();
        s.commit().unwrap();
        assert!(empty.join("f").exists());
    }
}
