//! NBD: a client that reads QEMU disks (and any NBD server) as a
//! [`BlockDevice`], and a read-only server that exports a recovery point.
//!
//! Written from the protocol's spec (the NBD project's `doc/proto.md`): no
//! crate speaks structured replies and block status. The wire format is in
//! `proto`, the client in `client`, the export server in `server`.
//!
//! # Change tracking with a dirty bitmap
//!
//! [`NbdDevice`] opened with a bitmap name selects the metadata context
//! `qemu:dirty-bitmap:NAME` (what `qemu-nbd -B NAME` or a QMP
//! `block-export-add` with `bitmaps` exports) and hands out the change
//! token `nbd-bitmap:NAME`. The next backup of that disk passes the token
//! of the previous point back; [`changed_since`](BlockDevice::changed_since)
//! answers from the bitmap only when it names the same bitmap, else the
//! engine compares every block. The engine adds its own rules (same disk
//! size and block size) and audits a sample of clean blocks.
//!
//! **The trust rule.** The bitmap must have been recording since before the
//! previous point's snapshot was taken: created (or cleared) before that
//! snapshot, and never cleared since. Clearing it right after a point is
//! committed, with the disk not written between the snapshot and the clear
//! (a stopped VM, or the QMP provider's checkpoint rotation), keeps that
//! true. A bitmap cleared at any other time silently drops changes; the
//! audit finds that with the probability of its sample, and at rate 1.0
//! always.
//!
//! # Holes
//!
//! `base:allocation` extents with `NBD_STATE_ZERO` read as zeros and are
//! skipped; `NBD_STATE_HOLE` alone promises nothing about the bytes and is
//! read.

pub(crate) mod client;
pub(crate) mod proto;
mod provider;
mod qemu;
mod server;

use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::device::BlockDevice;
use crate::error::{Error, Result};
use client::NbdClient;

pub use provider::NbdProvider;
pub use qemu::QemuProvider;
pub use server::{ExportAddress, ExportOptions, NbdServer};

/// The default NBD TCP port.
pub const NBD_DEFAULT_PORT: u16 = 10809;

/// Where an NBD export is: parsed from an NBD URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddress {
    /// `nbd+unix:///EXPORT?socket=PATH`
    Unix {
        /// The unix socket.
        socket: PathBuf,
        /// The export's name ("" for the default export).
        export: String,
    },
    /// `nbd://HOST[:PORT]/EXPORT`
    Tcp {
        /// Host name or address (an IPv6 address without brackets).
        host: String,
        /// TCP port.
        port: u16,
        /// The export's name.
        export: String,
    },
}

impl NbdAddress {
    /// Whether `s` looks like an NBD URI (rather than a file path).
    pub fn is_uri(s: &str) -> bool {
        s.starts_with("nbd://") || s.starts_with("nbd+unix://") || s.starts_with("nbd+tcp://")
    }

    /// Parses `nbd+unix:///EXPORT?socket=PATH` or `nbd://HOST[:PORT]/EXPORT`
    /// (the URI forms of QEMU and libnbd, without TLS).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for anything else.
    ///
    /// ```
    /// use backup_core::NbdAddress;
    /// let a = NbdAddress::parse("nbd+unix:///disk0?socket=/run/nbd.sock")?;
    /// assert_eq!(a, NbdAddress::Unix { socket: "/run/nbd.sock".into(), export: "disk0".into() });
    /// let t = NbdAddress::parse("nbd://127.0.0.1:10810/")?;
    /// assert_eq!(t, NbdAddress::Tcp { host: "127.0.0.1".into(), port: 10810, export: "".into() });
    /// # Ok::<(), backup_core::Error>(())
    /// ```
    pub fn parse(uri: &str) -> Result<NbdAddress> {
        let err = |why: &str| Error::invalid("nbd uri", format!("{uri:?}: {why}"));
        let (scheme, rest) = uri.split_once("://").ok_or_else(|| err("no scheme"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let export = percent_decode(path).ok_or_else(|| err("bad percent-encoding in the export name"))?;
        let mut socket = None;
        for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("socket", v)) => socket = Some(percent_decode(v).ok_or_else(|| err("bad socket path"))?),
                _ => return Err(err(&format!("unsupported query parameter {kv:?}"))),
            }
        }
        match scheme {
            "nbd+unix" => {
                if !authority.is_empty() {
                    return Err(err("a unix URI has no host (nbd+unix:///EXPORT?socket=PATH)"));
                }
                let socket = socket.ok_or_else(|| err("no ?socket=PATH"))?;
                Ok(NbdAddress::Unix { socket: socket.into(), export })
            }
            "nbd" | "nbd+tcp" => {
                if socket.is_some() {
                    return Err(err("socket= is for nbd+unix URIs"));
                }
                let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
                    let (h, p) = v6.split_once(']').ok_or_else(|| err("unclosed [ in the host"))?;
                    (h, p.strip_prefix(':'))
                } else {
                    match authority.rsplit_once(':') {
                        Some((h, p)) => (h, Some(p)),
                        None => (authority, None),
                    }
                };
                if host.is_empty() {
                    return Err(err("no host"));
                }
                let port = match port {
                    Some(p) => p.parse().map_err(|_| err("bad port"))?,
                    None => NBD_DEFAULT_PORT,
                };
                Ok(NbdAddress::Tcp { host: host.to_string(), port, export })
            }
            "nbds" | "nbds+unix" => Err(err("TLS is not supported")),
            _ => Err(err("the scheme is not nbd or nbd+unix")),
        }
    }

    /// The export's name.
    pub fn export(&self) -> &str {
        match self {
            NbdAddress::Unix { export, .. } | NbdAddress::Tcp { export, .. } => export,
        }
    }
}

impl std::fmt::Display for NbdAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NbdAddress::Unix { socket, export } => write!(f, "nbd+unix:///{export}?socket={}", socket.display()),
            NbdAddress::Tcp { host, port, export } if host.contains(':') => write!(f, "nbd://[{host}]:{port}/{export}"),
            NbdAddress::Tcp { host, port, export } => write!(f, "nbd://{host}:{port}/{export}"),
        }
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// How an [`NbdDevice`] connects.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NbdOptions {
    /// Every exchange with the server (a handshake, a reply) must finish
    /// within this; a stalled server is an error, never a hang.
    pub timeout: Duration,
    /// Connections opened at most, for reads from many threads at once.
    /// More are opened only when needed; a server that accepts fewer (a
    /// `qemu-nbd` without `-e N` serves one) caps the pool, after
    /// [`extra_connection_timeout`](Self::extra_connection_timeout).
    pub connections: usize,
    /// How long an extra connection may take before the pool stops growing.
    pub extra_connection_timeout: Duration,
    /// A dirty bitmap exported as `qemu:dirty-bitmap:NAME` to use as change
    /// tracking (see the module's trust rule).
    pub bitmap: Option<String>,
}

impl Default for NbdOptions {
    fn default() -> Self {
        NbdOptions {
            timeout: Duration::from_secs(30),
            connections: 4,
            extra_connection_timeout: Duration::from_secs(1),
            bitmap: None,
        }
    }
}

impl NbdOptions {
    /// Options with a dirty bitmap.
    pub fn with_bitmap(mut self, name: impl Into<String>) -> Self {
        self.bitmap = Some(name.into());
        self
    }
    /// Options with another timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Options with another pool size (at least 1).
    pub fn with_connections(mut self, n: usize) -> Self {
        self.connections = n.max(1);
        self
    }
}

/// The change token of a disk read with dirty bitmap `name`.
pub fn bitmap_token(name: &str) -> String {
    format!("nbd-bitmap:{name}")
}

const BASE_ALLOCATION: &str = "base:allocation";

struct Pool {
    idle: Vec<NbdClient>,
    open: usize,
    max: usize,
}

/// A disk served over NBD, read through a pool of connections (one request
/// in flight on each), so that many threads read at once.
pub struct NbdDevice {
    addr: NbdAddress,
    options: NbdOptions,
    contexts: Vec<String>,
    size: u64,
    max_request: u32,
    read_only: bool,
    alloc_ctx: Option<u32>,
    /// Checkpoints, oldest first: change token and bitmap context.
    chain: Vec<(String, Option<u32>)>,
    token: Option<String>,
    pool: Mutex<Pool>,
    freed: Condvar,
}

impl std::fmt::Debug for NbdDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdDevice").field("addr", &self.addr).field("size", &self.size).finish_non_exhaustive()
    }
}

impl NbdDevice {
    /// Connects to the export at `addr`.
    ///
    /// # Errors
    /// [`Error::Nbd`] when the server cannot be reached, misbehaves, lacks
    /// the export, or lacks the bitmap asked for.
    pub fn open(addr: &NbdAddress, options: &NbdOptions) -> Result<NbdDevice> {
        match &options.bitmap {
            Some(b) => {
                let token = bitmap_token(b);
                let dev = Self::open_with_checkpoints(addr, options, &[(b.clone(), token.clone())], Some(token))?;
                if dev.chain.first().is_some_and(|(_, ctx)| ctx.is_none()) {
                    return Err(Error::Nbd {
                        peer: addr.to_string(),
                        source: io::Error::new(
                            io::ErrorKind::NotFound,
                            format!(
                                "dirty bitmap {b:?} unavailable: the server does not export it (qemu-nbd needs -B {b})"
                            ),
                        ),
                    });
                }
                Ok(dev)
            }
            None => Self::open_with_checkpoints(addr, options, &[], None),
        }
    }

    /// Opens with a chain of checkpoints, oldest first: (bitmap name, the
    /// change token of the snapshot it started at). Changes since the
    /// token of checkpoint `i` are the union of bitmaps `i..`; a checkpoint
    /// whose bitmap the server lacks breaks the chain before it. `token` is
    /// the change token of this snapshot.
    pub(crate) fn open_with_checkpoints(
        addr: &NbdAddress,
        options: &NbdOptions,
        checkpoints: &[(String, String)],
        token: Option<String>,
    ) -> Result<NbdDevice> {
        let mut contexts = vec![BASE_ALLOCATION.to_string()];
        contexts.extend(checkpoints.iter().map(|(b, _)| format!("qemu:dirty-bitmap:{b}")));
        let nbd_err = |source| Error::Nbd { peer: addr.to_string(), source };
        let first = NbdClient::connect(addr, &contexts, options.timeout).map_err(nbd_err)?;
        let ctx = |name: &str| first.neg.contexts.iter().find(|(_, n)| n == name).map(|(id, _)| *id);
        let alloc_ctx = ctx(BASE_ALLOCATION);
        let chain = checkpoints.iter().map(|(b, t)| (t.clone(), ctx(&format!("qemu:dirty-bitmap:{b}")))).collect();
        let neg = first.neg.clone();
        Ok(NbdDevice {
            addr: addr.clone(),
            options: options.clone(),
            contexts,
            size: neg.size,
            max_request: neg.max_block.clamp(512, proto::MAX_REQUEST_LEN),
            read_only: neg.flags & proto::TFLAG_READ_ONLY != 0,
            alloc_ctx,
            chain,
            token,
            pool: Mutex::new(Pool { idle: vec![first], open: 1, max: options.connections.max(1) }),
            freed: Condvar::new(),
        })
    }

    /// The change token this device answers [`changed_since`](BlockDevice::changed_since)
    /// for: `nbd-bitmap:NAME` when opened with a bitmap the server exports.
    pub fn change_token(&self) -> Option<String> {
        if self.chain.is_empty() || self.chain.last().is_some_and(|(_, c)| c.is_some()) {
            self.token.clone()
        } else {
            // The newest checkpoint's bitmap is missing: the chain from
            // this snapshot on could not be trusted either.
            None
        }
    }

    /// Whether the server says the export is read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Whether the server gives `base:allocation`.
    pub fn has_allocation_map(&self) -> bool {
        self.alloc_ctx.is_some()
    }

    /// Runs `f` on a pooled connection; a connection that saw an error is
    /// closed, never reused.
    fn with_conn<T>(&self, f: impl FnOnce(&mut NbdClient) -> io::Result<T>) -> io::Result<T> {
        let mut conn = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(c) = pool.idle.pop() {
                    break Some(c);
                }
                if pool.open < pool.max {
                    pool.open += 1;
                    break None;
                }
                pool = self.freed.wait(pool).unwrap_or_else(|e| e.into_inner());
            }
        };
        if conn.is_none() {
            let timeout = {
                let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
                if pool.open > 1 {
                    self.options.extra_connection_timeout.min(self.options.timeout)
                } else {
                    self.options.timeout
                }
            };
            match NbdClient::connect(&self.addr, &self.contexts, timeout) {
                Ok(mut c) => {
                    c.set_timeout(self.options.timeout);
                    conn = Some(c);
                }
                Err(e) => {
                    let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
                    pool.open -= 1;
                    if pool.open == 0 {
                        return Err(e);
                    }
                    // The server takes no more connections: make do.
                    pool.max = pool.open;
                    self.freed.notify_one();
                    drop(pool);
                    return self.with_conn(f);
                }
            }
        }
        let Some(mut c) = conn else { return Err(io::Error::other("no connection")) };
        let r = f(&mut c);
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_ok() {
            pool.idle.push(c);
        } else {
            pool.open -= 1;
            drop(c);
        }
        self.freed.notify_one();
        r
    }

    /// The extents of context `ctx` in `window`: (range, flags), in order.
    fn extents(&self, ctx: u32, window: Range<u64>) -> io::Result<Vec<(Range<u64>, u32)>> {
        let mut out = Vec::new();
        let end = window.end.min(self.size);
        let mut at = window.start;
        while at < end {
            // Block status lengths are u32; ask at most 1 GiB at a time.
            let len = (end - at).min(1 << 30) as u32;
            let reply = self.with_conn(|c| c.block_status(at, len))?;
            let ext = reply
                .into_iter()
                .find(|(id, _)| *id == ctx)
                .map(|(_, e)| e)
                .ok_or_else(|| proto::bad(format!("block status at byte {at} lacks context {ctx}")))?;
            let before = at;
            for (n, flags) in ext {
                out.push((at..at + n, flags));
                at += n;
            }
            if at == before {
                return Err(proto::bad(format!("block status at byte {at} described nothing")));
            }
        }
        Ok(out)
    }
}

/// Merges the ranges whose flags pass `keep`, joining neighbours.
fn ranges_where(ext: Vec<(Range<u64>, u32)>, keep: impl Fn(u32) -> bool) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for (r, f) in ext {
        if !keep(f) {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => out.push(r),
        }
    }
    out
}

impl BlockDevice for NbdDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let step = self.max_request as usize;
        let mut done = 0;
        while done < buf.len() {
            let n = step.min(buf.len() - done);
            self.with_conn(|c| c.read(offset + done as u64, &mut buf[done..done + n]))?;
            done += n;
        }
        Ok(())
    }

    fn allocated(&self, window: Range<u64>) -> io::Result<Option<Vec<Range<u64>>>> {
        let Some(ctx) = self.alloc_ctx else { return Ok(None) };
        Ok(Some(ranges_where(self.extents(ctx, window)?, |f| f & proto::STATE_ZERO == 0)))
    }

    fn changed_since(&self, token: &str, window: Range<u64>) -> io::Result<Option<Vec<Range<u64>>>> {
        let Some(i) = self.chain.iter().position(|(t, _)| t == token) else { return Ok(None) };
        let Some(ctxs) = self.chain[i..].iter().map(|(_, c)| *c).collect::<Option<Vec<u32>>>() else {
            return Ok(None);
        };
        let mut all: Vec<Range<u64>> = Vec::new();
        for ctx in ctxs {
            all.extend(ranges_where(self.extents(ctx, window.clone())?, |f| f & proto::STATE_DIRTY != 0));
        }
        all.sort_unstable_by_key(|r| r.start);
        let mut out: Vec<Range<u64>> = Vec::new();
        for r in all {
            match out.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => out.push(r),
            }
        }
        Ok(Some(out))
    }
}

impl Drop for NbdDevice {
    fn drop(&mut self) {
        let pool = self.pool.get_mut().unwrap_or_else(|e| e.into_inner());
        for c in pool.idle.drain(..) {
            c.disconnect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse() {
        let a = NbdAddress::parse("nbd+unix:///?socket=/tmp/a%20b.sock").expect("ok");
        assert_eq!(a, NbdAddress::Unix { socket: "/tmp/a b.sock".into(), export: String::new() });
        let t = NbdAddress::parse("nbd://localhost/drive%2D0").expect("ok");
        assert_eq!(t, NbdAddress::Tcp { host: "localhost".into(), port: NBD_DEFAULT_PORT, export: "drive-0".into() });
        let v6 = NbdAddress::parse("nbd://[::1]:99/x").expect("ok");
        assert_eq!(v6, NbdAddress::Tcp { host: "::1".into(), port: 99, export: "x".into() });
        assert_eq!(v6.to_string(), "nbd://[::1]:99/x");
        for bad in [
            "nbd+unix:///x",
            "nbd+unix://host/x?socket=/s",
            "nbd://:1/x",
            "nbd://h:99999/",
            "nbds://h/",
            "http://h/",
            "nbd://h/%zz",
            "nbd://h/?socket=/s",
            "/path/disk.img",
        ] {
            assert!(NbdAddress::parse(bad).is_err(), "{bad}");
        }
        assert!(NbdAddress::is_uri("nbd://h/") && !NbdAddress::is_uri("/x.img"));
    }

    #[test]
    fn ranges_merge() {
        let ext = vec![(0..10, 0), (10..20, 0), (20..30, 3), (30..40, 0)];
        assert_eq!(ranges_where(ext.clone(), |f| f & 2 == 0), vec![0..20, 30..40]);
        assert_eq!(ranges_where(ext, |f| f & 1 != 0), vec![20..30]);
    }
}
