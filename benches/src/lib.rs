//! What the benchmarks share: a reproducible generator and the block mix
//! their images are made of (25% zero blocks, 45% log-like text that LZ4
//! compresses 2 to 3 times, 30% random), so that the criterion groups and
//! the paired-run examples speak of the same data.

/// SplitMix64: a small, fast, reproducible generator (no dependency).
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)] // never ends: not an Iterator
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "kernel",
    "systemd",
    "started",
    "session",
    "user",
    "root",
    "eth0",
    "link",
    "up",
    "down",
    "error",
    "warning",
    "info",
    "debug",
    "disk",
    "block",
    "device",
    "mounted",
    "ext4",
    "journal",
    "request",
    "GET",
    "POST",
    "/api/v1/items",
    "200",
    "404",
    "500",
    "latency",
    "ms",
    "bytes",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "for",
    "on",
    "with",
    "from",
    "connection",
    "closed",
    "accepted",
    "timeout",
    "retry",
    "backup",
    "snapshot",
    "volume",
    "config",
    "loaded",
];

/// A text-like block: log lines made of common words and numbers; LZ4
/// compresses it about 2 to 3 times, like real logs and source files.
pub fn fill_text(rng: &mut Rng, out: &mut [u8]) {
    let mut pos = 0;
    while pos < out.len() {
        let line = format!(
            "2026-11-25T{:02}:{:02}:{:02}.{:06} host{} {}[{}]: ",
            rng.below(24),
            rng.below(60),
            rng.below(60),
            rng.below(1_000_000),
            rng.below(8),
            WORDS[rng.below(WORDS.len() as u64) as usize],
            rng.below(65536)
        );
        let mut s = line;
        for _ in 0..(4 + rng.below(10)) {
            s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
            s.push(' ');
            if rng.below(4) == 0 {
                s.push_str(&rng.below(100_000).to_string());
                s.push(' ');
            }
        }
        s.push('\n');
        let n = s.len().min(out.len() - pos);
        out[pos..pos + n].copy_from_slice(&s.as_bytes()[..n]);
        pos += n;
    }
}

/// Random bytes: incompressible.
pub fn fill_random(rng: &mut Rng, out: &mut [u8]) {
    for c in out.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

/// One block of the mix: 25% zero, 45% text, 30% random.
pub fn fill_block(rng: &mut Rng, out: &mut [u8]) {
    match rng.below(100) {
        0..25 => out.fill(0),
        25..70 => fill_text(rng, out),
        _ => fill_random(rng, out),
    }
}
