//! What the points of a vault need: the one live-set computation of gc,
//! on a local vault and a shared one alike.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::model::ContentId;
use crate::vault::{Vault, VaultSource};

/// The segments and chunks that the vault's points reference.
pub(super) struct LiveSet {
    /// How many points there are.
    pub points: usize,
    /// The segments they name.
    pub segments: HashSet<ContentId>,
    /// The chunks those segments name.
    pub chunks: HashSet<ContentId>,
}

/// Reads every manifest and every segment it names (each hash-checked);
/// `held` are the soft-deleted points whose data must stay too.
///
/// # Errors
/// A manifest or a live segment that cannot be read: gc refuses to run,
/// since it could not know what that point still needs.
pub(super) fn live_set(vault: &Vault, held: &[crate::PointManifest]) -> Result<LiveSet> {
    let refuse = |why: String| Error::corrupt(format!("vault {}", vault.location()), why);
    let (points, bad) = vault.scan_points(None)?;
    if let Some(first) = bad.first() {
        return Err(refuse(format!(
            "gc refuses to run while {} point manifest(s) cannot be read (first: {first}); \
             it could not know what they still need",
            bad.len()
        )));
    }
    let segments: HashSet<ContentId> =
        points.iter().chain(held).flat_map(|p| &p.disks).flat_map(|d| d.segments.iter().copied()).collect();
    let mut chunks = HashSet::new();
    for s in &segments {
        let entries = vault
            .segment(s)
            .map_err(|e| refuse(format!("gc refuses to run: a live index segment cannot be read: {e}")))?;
        chunks.extend(entries.into_iter().flatten());
    }
    Ok(LiveSet { points: points.len() + held.len(), segments, chunks })
}
