//! Find a model in the local Hugging Face hub cache by repo id, with no network.
//!
//! The cache layout (shared by Python `huggingface_hub` and the Rust `hf-hub` crate):
//! `<root>/models--<org>--<name>/refs/<branch>` holds a commit hash, and
//! `<root>/models--<org>--<name>/snapshots/<commit>/` holds the repo's files (links into
//! `blobs/`). The root is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`, as in `huggingface_hub` (hf-hub 0.4's `Cache::from_env` ignores
//! `HF_HUB_CACHE`, so the root is found here and only the folder naming is hf-hub's).
//!
//! A model argument `org/name` or `org/name@revision` (a branch, tag or commit hash; default
//! `main`) names a repo.

use crate::MemtuneError;
use anyhow::Result;
use hf_hub::{Repo, RepoType};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Revision used when a repo id names none (the hub's default branch).
pub const DEFAULT_REVISION: &str = "main";

/// The cache root from the environment: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `$HOME/.cache/huggingface/hub`.
pub fn cache_root() -> PathBuf {
    cache_root_from(std::env::var_os("HF_HUB_CACHE"), std::env::var_os("HF_HOME"), std::env::var_os("HOME"))
}

/// `cache_root` over given variable values (testable without touching the environment).
pub fn cache_root_from(hf_hub_cache: Option<OsString>, hf_home: Option<OsString>, home: Option<OsString>) -> PathBuf {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = set(hf_hub_cache) {
        return p;
    }
    if let Some(p) = set(hf_home) {
        return p.join("hub");
    }
    set(home).unwrap_or_default().join(".cache").join("huggingface").join("hub")
}

/// A repo id with an optional revision, as written on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoRef {
    pub repo_id: String,
    pub revision: String,
}

impl RepoRef {
    /// `org/name` or `org/name@revision`; `None` for anything else (absolute or relative paths
    /// with other than exactly one `/`, `.`/`..` components, characters the hub does not allow).
    pub fn parse(s: &str) -> Option<Self> {
        let (id, rev) = match s.split_once('@') {
            Some((id, rev)) if !rev.is_empty() && !rev.contains(['/', '\\']) => (id, rev),
            Some(_) => return None,
            None => (s, DEFAULT_REVISION),
        };
        let parts: Vec<&str> = id.split('/').collect();
        let ok = |p: &str| !p.is_empty() && p != "." && p != ".." && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        (parts.len() == 2 && parts.iter().all(|p| ok(p))).then(|| Self { repo_id: id.to_string(), revision: rev.to_string() })
    }

    /// `<root>/models--org--name`.
    pub fn repo_dir(&self, root: &Path) -> PathBuf {
        root.join(Repo::new(self.repo_id.clone(), RepoType::Model).folder_name())
    }
}

impl std::fmt::Display for RepoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repo_id, self.revision)
    }
}

/// The snapshot folder of `repo` in the cache at `root`. Only the folder is found here; whether
/// it holds every file a model needs is `pretrained::check_model_dir`'s job.
pub fn snapshot_dir(repo: &RepoRef, root: &Path) -> Result<PathBuf> {
    let not_cached = |msg: String| -> anyhow::Error {
        MemtuneError::Other(format!(
            "model {repo} is not in the hub cache at {} ({msg}); download it first, e.g. \
             `huggingface-cli download {}`, or set HF_HUB_CACHE / HF_HOME to the cache that has it",
            root.display(),
            repo.repo_id
        ))
        .into()
    };
    let dir = repo.repo_dir(root);
    if !dir.is_dir() {
        return Err(not_cached(format!("no folder {}", dir.display())));
    }
    let ref_file = dir.join("refs").join(&repo.revision);
    let commit = match std::fs::read_to_string(&ref_file) {
        Ok(c) => c.trim().to_string(),
        // Not a branch or tag: a commit hash names its snapshot directly.
        Err(_) => repo.revision.clone(),
    };
    let snap = dir.join("snapshots").join(&commit);
    if !snap.is_dir() {
        let have = list_names(&dir.join("snapshots"));
        return Err(not_cached(format!(
            "no ref file {} and no snapshot {}; snapshots present: [{}]",
            ref_file.display(),
            snap.display(),
            have.join(", ")
        )));
    }
    Ok(snap)
}

fn list_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_paths_are_told_apart() {
        let r = RepoRef::parse("HuggingFaceTB/SmolLM2-135M-Instruct").unwrap();
        assert_eq!((r.repo_id.as_str(), r.revision.as_str()), ("HuggingFaceTB/SmolLM2-135M-Instruct", "main"));
        assert_eq!(RepoRef::parse("Qwen/Qwen2.5-0.5B@v1.0").unwrap().revision, "v1.0");
        for not_id in ["runs", "/abs/path", "./runs/x", "a/b/c", "../x", "a/", "a b/c", "a/b@", "a/b@x/y", ""] {
            assert!(RepoRef::parse(not_id).is_none(), "{not_id:?}");
        }
        assert_eq!(r.repo_dir(Path::new("/c")), PathBuf::from("/c/models--HuggingFaceTB--SmolLM2-135M-Instruct"));
    }

    #[test]
    fn cache_root_follows_huggingface_hub() {
        let s = |x: &str| Some(OsString::from(x));
        assert_eq!(cache_root_from(s("/a"), s("/h"), s("/home/u")), PathBuf::from("/a"));
        assert_eq!(cache_root_from(None, s("/h"), s("/home/u")), PathBuf::from("/h/hub"));
        assert_eq!(cache_root_from(s(""), None, s("/home/u")), PathBuf::from("/home/u/.cache/huggingface/hub"));
    }

    #[test]
    fn snapshot_by_branch_or_commit_and_clear_errors() {
        let root = tempfile::tempdir().unwrap();
        let r = RepoRef::parse("org/tiny").unwrap();
        let err = snapshot_dir(&r, root.path()).unwrap_err().to_string();
        assert!(err.contains("org/tiny") && err.contains("models--org--tiny") && err.contains("huggingface-cli download"), "{err}");
        let dir = root.path().join("models--org--tiny");
        std::fs::create_dir_all(dir.join("snapshots/abc123")).unwrap();
        std::fs::create_dir_all(dir.join("refs")).unwrap();
        std::fs::write(dir.join("refs/main"), "abc123\n").unwrap();
        assert_eq!(snapshot_dir(&r, root.path()).unwrap(), dir.join("snapshots/abc123"));
        assert_eq!(snapshot_dir(&RepoRef::parse("org/tiny@abc123").unwrap(), root.path()).unwrap(), dir.join("snapshots/abc123"));
        let err = snapshot_dir(&RepoRef::parse("org/tiny@dev").unwrap(), root.path()).unwrap_err().to_string();
        assert!(err.contains("refs/dev") && err.contains("[abc123]"), "{err}");
    }
}
