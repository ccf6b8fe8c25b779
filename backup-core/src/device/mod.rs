//! Block devices: a disk, or a snapshot of one, read by position.
//!
//! [`BlockDevice`] is the seam between a provider and the engine. The
//! engine asks it, one window at a time, which ranges may hold data
//! ([`allocated`](BlockDevice::allocated)) and which changed since an
//! earlier state ([`changed_since`](BlockDevice::changed_since)), then reads
//! blocks from many threads at once with [`read_at`](BlockDevice::read_at).

mod raw_image;

use std::io;
use std::ops::Range;

pub use raw_image::RawImage;

/// A disk or a snapshot of one, readable by position from many threads at
/// once.
///
/// Maps are asked for one window at a time so that a device never has to
/// build a map of a whole disk in memory.
pub trait BlockDevice: Send + Sync {
    /// The size in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` with the bytes at `offset`. Called from several threads
    /// at once. A read past the end, or a short read, is an error.
    ///
    /// # Errors
    /// Whatever the device reports; the engine adds the VM, disk and offset.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// The ranges inside `window` that may hold data, sorted and disjoint;
    /// everything else reads as zeros and is never read. `Ok(None)` when the
    /// device cannot tell (everything may hold data).
    ///
    /// # Errors
    /// Whatever the device reports.
    fn allocated(&self, window: Range<u64>) -> io::Result<Option<Vec<Range<u64>>>> {
        let _ = window;
        Ok(None)
    }

    /// The ranges inside `window` that changed since the state named by
    /// `token` (a change token an earlier snapshot of this disk returned),
    /// sorted and disjoint. `Ok(None)` when the device cannot tell for that
    /// token: the engine then reads the whole window.
    ///
    /// # Errors
    /// Whatever the device reports.
    fn changed_since(&self, token: &str, window: Range<u64>) -> io::Result<Option<Vec<Range<u64>>>> {
        let _ = (token, window);
        Ok(None)
    }
}

impl<T: BlockDevice + ?Sized> BlockDevice for std::sync::Arc<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
    fn allocated(&self, window: Range<u64>) -> io::Result<Option<Vec<Range<u64>>>> {
        (**self).allocated(window)
    }
    fn changed_since(&self, token: &str, window: Range<u64>) -> io::Result<Option<Vec<Range<u64>>>> {
        (**self).changed_since(token, window)
    }
}

/// Whether `block` overlaps any of the sorted, disjoint `ranges`.
pub(crate) fn overlaps(ranges: &[Range<u64>], block: &Range<u64>) -> bool {
    // First range that ends after the block starts.
    let i = ranges.partition_point(|r| r.end <= block.start);
    ranges.get(i).is_some_and(|r| r.start < block.end)
}

#[cfg(test)]
mod tests {
    use super::overlaps;

    #[test]
    fn overlaps_finds_touching_and_inner_ranges() {
        let r = vec![10..20, 30..40];
        assert!(overlaps(&r, &(0..11)));
        assert!(!overlaps(&r, &(0..10)));
        assert!(!overlaps(&r, &(20..30)));
        assert!(overlaps(&r, &(35..36)));
        assert!(overlaps(&r, &(25..31)));
        assert!(!overlaps(&r, &(40..100)));
        assert!(!overlaps(&[], &(0..1)));
    }
}
