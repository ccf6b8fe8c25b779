//! `vmbackup repair`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use backup_core::RepairOptions;
use serde_json::json;

use crate::globals::Globals;
use crate::output::outln;

/// Rebuilds the chunk index files from the packs and says what is lost.
/// Exit code 1 when a point lost data.
pub fn run(g: &Globals, vault: &Path, dry_run: bool, json: bool) -> Result<ExitCode> {
    let vault = g.open(vault)?;
    let mut options = RepairOptions::default();
    options.dry_run = dry_run;
    let report = backup_core::repair(&vault, &options)?;
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({ "nothing_lost": report.nothing_lost(), "report": report }))?
        );
    } else {
        let verb = if dry_run { "would rebuild" } else { "rebuilt" };
        for r in &report.rebuilt {
            let how = if r.from_frame_walk { "from a walk over its frames" } else { "from its trailer" };
            outln!("{verb} chunk index of pack {} ({} chunks, {how}): was {}", r.pack, r.chunks, r.why);
        }
        for p in &report.unreadable_packs {
            outln!("UNREADABLE pack {p}");
        }
        for p in &report.lost {
            outln!("LOST {p}");
        }
        for p in &report.other {
            outln!("DAMAGED {p}");
        }
        outln!(
            "{}: {} packs, {} chunk index files {verb}, {} damaged ranges of points lost",
            if report.nothing_lost() { "nothing lost" } else { "DATA LOST" },
            report.packs,
            report.rebuilt.len(),
            report.lost.len()
        );
    }
    Ok(if report.nothing_lost() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
