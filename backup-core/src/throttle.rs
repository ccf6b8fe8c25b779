//! Throttling: [`Throttle`], [`ThrottledDevice`], [`ThrottledProvider`].

use std::io;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::device::BlockDevice;
use crate::error::{Error, Result};
use crate::model::{Consistency, Vm};
use crate::snapshot::{PrepareReport, Snapshot, SnapshotDisk, SnapshotProvider};

/// A token bucket of bytes per second, and optionally a limit on reads at
/// once, shared by every reader it throttles.
///
/// The engine reads a disk one block at a time through its
/// [`BlockDevice`]; a [`ThrottledDevice`] takes the block's bytes from a
/// shared [`Throttle`] before each read, so every block of every disk of a
/// job (or of several jobs sharing one throttle, e.g. all jobs on one host)
/// counts against the same budget. [`ThrottledProvider`] wraps any snapshot
/// provider so that the devices it hands out are throttled, which needs no
/// change to the job or the engine. Blocks that change tracking or holes
/// let the engine skip are never read, so they cost nothing.
///
/// The bucket lets the balance go negative: a reader that takes more than
/// is there sleeps until the debt is paid back at the rate. That keeps the
/// average exact however large a block is and however many threads read at
/// once; the burst (a tenth of a second of the rate, at least 64 KiB) only
/// bounds how much passes unthrottled after an idle spell.
///
/// [`with_concurrent_reads`](Self::with_concurrent_reads) also caps how
/// many reads run at once across everything sharing the throttle (say, all
/// jobs on one host whose storage suffers from deep queues), whatever the
/// engine's thread count.
///
/// ```
/// use backup_core::Throttle;
/// let t = Throttle::new(64 << 20)?; // 64 MiB/s
/// t.take(1 << 20); // returns at once: within the burst
/// assert_eq!(t.bytes_per_second(), 64 << 20);
/// let per_host = Throttle::new(200 << 20)?.with_concurrent_reads(4)?;
/// assert_eq!(per_host.concurrent_reads(), Some(4));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Throttle {
    rate: u64,
    burst: f64,
    state: Mutex<Bucket>,
    /// (limit, reads in flight) and the wait for a free slot.
    slots: Option<(usize, Mutex<usize>, Condvar)>,
}

/// A read slot, given back on drop.
struct Slot<'a>(&'a Throttle);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some((_, busy, freed)) = &self.0.slots {
            *busy.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
            freed.notify_one();
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Throttle {
    /// A throttle of `bytes_per_second`, starting with a full burst.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a rate of 0.
    pub fn new(bytes_per_second: u64) -> Result<Throttle> {
        if bytes_per_second == 0 {
            return Err(Error::invalid("throttle rate", "0 bytes per second would never finish"));
        }
        let burst = (bytes_per_second as f64 / 10.0).max(64.0 * 1024.0);
        Ok(Throttle {
            rate: bytes_per_second,
            burst,
            state: Mutex::new(Bucket { tokens: burst, last: Instant::now() }),
            slots: None,
        })
    }

    /// The same throttle, also letting at most `reads` reads run at once.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for 0 reads.
    pub fn with_concurrent_reads(mut self, reads: usize) -> Result<Throttle> {
        if reads == 0 {
            return Err(Error::invalid("concurrent reads", "0 reads at once would never finish"));
        }
        self.slots = Some((reads, Mutex::new(0), Condvar::new()));
        Ok(self)
    }

    /// The limit of reads at once, if any.
    pub fn concurrent_reads(&self) -> Option<usize> {
        self.slots.as_ref().map(|(n, _, _)| *n)
    }

    /// Waits for a free read slot.
    fn slot(&self) -> Slot<'_> {
        if let Some((limit, busy, freed)) = &self.slots {
            let mut n = busy.lock().unwrap_or_else(|p| p.into_inner());
            while *n >= *limit {
                n = freed.wait(n).unwrap_or_else(|p| p.into_inner());
            }
            *n += 1;
        }
        Slot(self)
    }

    /// The rate.
    pub fn bytes_per_second(&self) -> u64 {
        self.rate
    }

    /// Takes `bytes` from the bucket, sleeping as long as the rate asks.
    pub fn take(&self, bytes: u64) {
        let wait = {
            let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let refill = now.duration_since(b.last).as_secs_f64() * self.rate as f64;
            b.tokens = (b.tokens + refill).min(self.burst) - bytes as f64;
            b.last = now;
            if b.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-b.tokens / self.rate as f64) }
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// A device whose reads are throttled.
pub struct ThrottledDevice {
    inner: Arc<dyn BlockDevice>,
    throttle: Arc<Throttle>,
}

impl ThrottledDevice {
    /// Wraps a device.
    pub fn new(inner: Arc<dyn BlockDevice>, throttle: Arc<Throttle>) -> Self {
        ThrottledDevice { inner, throttle }
    }
}

impl BlockDevice for ThrottledDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.throttle.take(buf.len() as u64);
        let _slot = self.throttle.slot();
        self.inner.read_at(offset, buf)
    }
    fn allocated(&self, window: Range<u64>) -> io::Result<Option<Vec<Range<u64>>>> {
        self.inner.allocated(window)
    }
    fn changed_since(&self, token: &str, window: Range<u64>) -> io::Result<Option<Vec<Range<u64>>>> {
        self.inner.changed_since(token, window)
    }
}

/// A snapshot provider whose devices are throttled; everything else goes
/// to the provider it wraps.
///
/// ```
/// use std::sync::Arc;
/// use backup_core::*;
/// let dir = tempfile::tempdir()?;
/// let image = dir.path().join("root.img");
/// std::fs::write(&image, vec![7u8; 1 << 20])?;
/// let vault = Vault::init(dir.path().join("vault"))?;
/// let vm = Vm::from_images("web", &[&image])?;
/// let provider = ThrottledProvider::new(ImageFileProvider::new(), Arc::new(Throttle::new(256 << 20)?));
/// let report = backup(&vault, &provider, &vm, &BackupOptions::default())?;
/// assert_eq!(report.point.disks[0].size, 1 << 20);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ThrottledProvider<P> {
    inner: P,
    throttle: Arc<Throttle>,
}

impl<P: SnapshotProvider> ThrottledProvider<P> {
    /// Wraps a provider; every job through it shares `throttle`.
    pub fn new(inner: P, throttle: Arc<Throttle>) -> Self {
        ThrottledProvider { inner, throttle }
    }

    /// The throttle.
    pub fn throttle(&self) -> &Arc<Throttle> {
        &self.throttle
    }
}

impl<P: SnapshotProvider> SnapshotProvider for ThrottledProvider<P> {
    fn prepare(&self, vm: &Vm) -> Result<PrepareReport> {
        self.inner.prepare(vm)
    }
    fn version(&self) -> String {
        self.inner.version()
    }
    fn snapshot(&self, vm: &Vm, wanted: Consistency) -> Result<Snapshot> {
        self.snapshot_since(vm, wanted, &[])
    }
    fn snapshot_since(&self, vm: &Vm, wanted: Consistency, previous: &[(String, String)]) -> Result<Snapshot> {
        let mut s = self.inner.snapshot_since(vm, wanted, previous)?;
        s.disks = s
            .disks
            .into_iter()
            .map(|d| SnapshotDisk { device: Arc::new(ThrottledDevice::new(d.device, self.throttle.clone())), ..d })
            .collect();
        Ok(s)
    }
    fn check_intact(&self, vm: &Vm, snapshot: &Snapshot) -> Result<()> {
        self.inner.check_intact(vm, snapshot)
    }
    fn keepable(&self, snapshot: &Snapshot) -> Option<Vec<crate::snapshot::KeptDisk>> {
        self.inner.keepable(snapshot)
    }
    fn configuration(&self, vm: &Vm, snapshot: &Snapshot) -> Option<crate::model::VmConfiguration> {
        self.inner.configuration(vm, snapshot)
    }
    fn release(&self, vm: &Vm, snapshot: Snapshot) -> Result<()> {
        self.inner.release(vm, snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_rate_is_refused() {
        assert!(Throttle::new(0).is_err());
    }

    /// Sleeping is never shorter than asked, so the lower bound is safe to
    /// test; the upper bound (within 10% of the rate) is a benchmark's job.
    #[test]
    fn throttled_reads_take_at_least_their_time() {
        let rate = 8u64 << 20;
        let t = Arc::new(Throttle::new(rate).expect("rate"));
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                let t = t.clone();
                s.spawn(move || {
                    for _ in 0..32 {
                        t.take(64 << 10);
                    }
                });
            }
        });
        let total = 2 * 32 * (64u64 << 10);
        let floor = (total as f64 - t.burst) / rate as f64;
        assert!(start.elapsed().as_secs_f64() >= floor * 0.99, "{:?} < {floor} s", start.elapsed());
    }

    #[test]
    fn concurrent_reads_are_capped() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Slow {
            now: AtomicUsize,
            most: AtomicUsize,
        }
        impl BlockDevice for Slow {
            fn size(&self) -> u64 {
                1 << 30
            }
            fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> io::Result<()> {
                let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                self.now.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        }
        assert!(Throttle::new(1).and_then(|t| t.with_concurrent_reads(0)).is_err());
        let slow = Arc::new(Slow { now: AtomicUsize::new(0), most: AtomicUsize::new(0) });
        let t = Arc::new(Throttle::new(u64::MAX).and_then(|t| t.with_concurrent_reads(2)).expect("throttle"));
        let dev = ThrottledDevice::new(slow.clone(), t);
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    let mut buf = [0u8; 16];
                    for _ in 0..5 {
                        dev.read_at(0, &mut buf).expect("read");
                    }
                });
            }
        });
        assert_eq!(slow.most.load(Ordering::SeqCst), 2);
    }
}
