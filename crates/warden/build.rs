//! Records the commit the binary was built from, for `warden version` and `--version`:
//! `WARDEN_COMMIT` if set (a package build from a source tarball), else `git describe` of the
//! checkout's commit, else "unknown". (Uncommitted changes are not marked: watching the index
//! would rebuild the binary at every `git add`.)

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=WARDEN_COMMIT");
    // Rebuilt when the checked-out commit moves (HEAD itself, or the branch it points to).
    let git_dir = std::path::Path::new("../../.git");
    if git_dir.is_dir() {
        println!("cargo:rerun-if-changed=../../.git/HEAD");
        if let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD"))
            && let Some(reference) = head.trim().strip_prefix("ref: ")
        {
            // A path that does not exist would rerun this at every build: a packed ref
            // lives in packed-refs.
            if git_dir.join(reference).exists() {
                println!("cargo:rerun-if-changed=../../.git/{reference}");
            } else if git_dir.join("packed-refs").exists() {
                println!("cargo:rerun-if-changed=../../.git/packed-refs");
            }
        }
    }
    let commit = std::env::var("WARDEN_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["describe", "--always", "--abbrev=12"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
                .filter(|c| !c.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=WARDEN_COMMIT={commit}");
}
