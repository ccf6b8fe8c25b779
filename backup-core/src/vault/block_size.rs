//! The block sizes a disk's chain may have: a fact of the vault format
//! (every index segment entry covers one block, and a manifest records the
//! size), so it lives here and the engine takes it from the vault.

use crate::error::{Error, Result};

/// The default block size: 64 KiB, QEMU's dirty-bitmap granularity.
pub const DEFAULT_BLOCK_SIZE: u32 = 64 << 10;
/// The smallest block size.
pub const MIN_BLOCK_SIZE: u32 = 16 << 10;
/// The largest block size.
pub const MAX_BLOCK_SIZE: u32 = 4 << 20;

/// Checks a block size: a power of two from 16 KiB to 4 MiB.
///
/// # Errors
/// [`Error::InvalidArgument`].
///
/// ```
/// assert!(backup_core::check_block_size(65536).is_ok());
/// assert!(backup_core::check_block_size(65537).is_err());
/// ```
pub fn check_block_size(block_size: u32) -> Result<()> {
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(Error::invalid("block size", format!("{block_size} is not a power of two from 16 KiB to 4 MiB")));
    }
    Ok(())
}
