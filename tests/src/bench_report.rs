//! Writes benchmark results into `BENCHMARKS.md` at the workspace root: each benchmark owns the
//! section between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`, stamped with the commit and
//! the machine, so benchmarks run separately never overwrite each other.

use std::{path::PathBuf, process::Command};

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// One line naming the commit and the machine the figures come from.
pub fn provenance() -> String {
    let commit = sh(
        "git",
        &[
            "-C",
            &workspace_root().to_string_lossy(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let dirty = !sh(
        "git",
        &[
            "-C",
            &workspace_root().to_string_lossy(),
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .is_empty();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "commit {commit}{}, kernel {}, {} CPUs ({cpu}), measured {}",
        if dirty { " (with local changes)" } else { "" },
        sh("uname", &["-r"]),
        // The machine's CPUs, not this process's affinity (benchmarks pin themselves).
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
            .unwrap_or(0),
        sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    )
}

/// Replaces (or appends) the section `name` of BENCHMARKS.md with `body`.
pub fn write_section(name: &str, body: &str) -> anyhow::Result<()> {
    let path = workspace_root().join("BENCHMARKS.md");
    let current = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nEvery figure is a ratio against a peer measured in the same run (interleaved \
         arms, medians). Regenerate with `cargo xtask bench <name>`.\n"
            .to_owned()
    });
    let open = format!("<!-- bench:{name} -->");
    let close = format!("<!-- /bench:{name} -->");
    let section = format!("{open}\n_{}_\n\n{}\n{close}", provenance(), body.trim_end());
    let updated = match (current.find(&open), current.find(&close)) {
        (Some(a), Some(b)) if b > a => {
            format!(
                "{}{}{}",
                &current[..a],
                section,
                &current[b + close.len()..]
            )
        }
        _ => format!("{}\n{}\n", current.trim_end(), section),
    };
    std::fs::write(&path, updated)?;
    println!("wrote section {name} of {}", path.display());
    Ok(())
}
