//! A read-only NBD server for one disk of a recovery point, so that
//! `qemu-img`, `qemu-nbd`, `nbdinfo` or the kernel's `nbd-client` can read a
//! point without restoring it.
//!
//! Fixed newstyle handshake with `NBD_OPT_GO`, `NBD_OPT_INFO`,
//! `NBD_OPT_EXPORT_NAME`, `NBD_OPT_LIST`, structured replies and the
//! `base:allocation` metadata context (zero blocks are holes that read as
//! zeros). Writes, trims and write-zeroes are refused with `EPERM`. A thread
//! per client; the vault's shared lock is held for as long as the server
//! lives, so prune and gc cannot remove what it serves.
//!
//! Every block is re-hashed against its id as it is read (as restore
//! does): damaged data is an `EIO` error naming the byte range, never
//! returned as data.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::proto::*;
use crate::disk_reader::DiskReader;
use crate::error::{Error, Result};
use crate::model::CancelToken;
use crate::vault::{DiskRecord, LockMode, PointManifest, Vault, VaultLock};

/// Where the export listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportAddress {
    /// A unix socket, created (it must not exist) and removed on drop.
    Unix(PathBuf),
    /// A TCP address; only loopback unless
    /// [`ExportOptions::allow_remote`].
    Tcp(SocketAddr),
}

/// How the export server runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExportOptions {
    /// Accept a TCP address that is not loopback (the export has no
    /// authentication and no encryption: anyone who reaches it reads the
    /// disk).
    pub allow_remote: bool,
    /// Clients served at once; more are disconnected at once.
    pub max_clients: usize,
    /// How long a client may take for its handshake and for sending one
    /// request once it started (idle clients between requests are kept).
    pub timeout: Duration,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { allow_remote: false, max_clients: 16, timeout: Duration::from_secs(30) }
    }
}

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

/// A bound, read-only NBD export of one disk of a point.
///
/// ```no_run
/// use backup_core::*;
/// let vault = Vault::open("/backups/vault")?;
/// let point = vault.find_point("web", "latest")?;
/// let at = ExportAddress::Unix("/run/vmbackup-web.sock".into());
/// let server = NbdServer::bind(&vault, &point, "root", &at, ExportOptions::default())?;
/// println!("qemu-img info {}", server.uri());
/// server.serve(&CancelToken::new())?;
/// # Ok::<(), backup_core::Error>(())
/// ```
pub struct NbdServer<'v> {
    vault: &'v Vault,
    _lock: VaultLock,
    point: PointManifest,
    disk: DiskRecord,
    listener: Listener,
    options: ExportOptions,
    clients: AtomicUsize,
    last_error: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for NbdServer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdServer")
            .field("point", &self.point.id)
            .field("disk", &self.disk.name)
            .finish_non_exhaustive()
    }
}

impl<'v> NbdServer<'v> {
    /// Takes the vault's shared lock and binds the listener for `disk` (a
    /// name or an index) of `point`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a remote address without
    /// `allow_remote` or a socket path that exists; [`Error::NotFound`] for
    /// an unknown disk; [`Error::Locked`]; I/O errors binding.
    pub fn bind(
        vault: &'v Vault,
        point: &PointManifest,
        disk: &str,
        at: &ExportAddress,
        options: ExportOptions,
    ) -> Result<NbdServer<'v>> {
        let lock = vault.lock(LockMode::Shared)?;
        // Opened once here so that a bad disk or index fails the bind.
        let record = DiskReader::unlocked(vault, point, disk)?;
        let record = point.disk(record.name())?.clone();
        let listener = match at {
            ExportAddress::Tcp(a) => {
                if !a.ip().is_loopback() && !options.allow_remote {
                    return Err(Error::invalid(
                        "export address",
                        format!("{a} is not loopback; the export has no authentication (allow it explicitly)"),
                    ));
                }
                Listener::Tcp(TcpListener::bind(a).map_err(|e| Error::io("listen on", a.to_string(), e))?)
            }
            ExportAddress::Unix(p) => {
                if p.symlink_metadata().is_ok() {
                    return Err(Error::invalid("export socket", format!("{} already exists", p.display())));
                }
                Listener::Unix(UnixListener::bind(p).map_err(|e| Error::io("listen on", p, e))?, p.clone())
            }
        };
        Ok(NbdServer {
            vault,
            _lock: lock,
            point: point.clone(),
            disk: record,
            listener,
            options,
            clients: AtomicUsize::new(0),
            last_error: std::sync::Mutex::new(None),
        })
    }

    /// The URI clients connect to (`nbd+unix:///?socket=PATH` or
    /// `nbd://HOST:PORT/`); any export name is accepted.
    pub fn uri(&self) -> String {
        match &self.listener {
            Listener::Unix(_, p) => format!("nbd+unix:///?socket={}", p.display()),
            Listener::Tcp(l) => match l.local_addr() {
                Ok(SocketAddr::V6(a)) => format!("nbd://[{}]:{}/", a.ip(), a.port()),
                Ok(a) => format!("nbd://{a}/"),
                Err(_) => "nbd://?/".into(),
            },
        }
    }

    /// The size of the exported disk.
    pub fn size(&self) -> u64 {
        self.disk.size
    }

    /// How many clients connected so far.
    pub fn clients_served(&self) -> usize {
        self.clients.load(Ordering::SeqCst)
    }

    fn record_error(&self, msg: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(msg);
        }
    }

    /// The last read that failed (damaged or missing data), naming the
    /// disk's byte range: what a client saw as `EIO`.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }

    /// Serves clients, a thread each, until `cancel` is set; then waits for
    /// the clients' threads (they notice within a fraction of a second).
    ///
    /// # Errors
    /// I/O errors of the listener. A client's errors end only that client.
    pub fn serve(&self, cancel: &CancelToken) -> Result<()> {
        let active = AtomicUsize::new(0);
        match &self.listener {
            Listener::Unix(l, p) => l.set_nonblocking(true).map_err(|e| Error::io("listen on", p, e))?,
            Listener::Tcp(l) => l.set_nonblocking(true).map_err(|e| Error::io("listen on", "tcp socket", e))?,
        }
        std::thread::scope(|scope| -> Result<()> {
            while !cancel.is_cancelled() {
                let accepted = match &self.listener {
                    Listener::Unix(l, _) => l.accept().map(|(s, _)| {
                        let _ = s.set_nonblocking(false);
                        Stream::Unix(s)
                    }),
                    Listener::Tcp(l) => l.accept().map(|(s, _)| {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_nodelay(true);
                        Stream::Tcp(s)
                    }),
                };
                match accepted {
                    Ok(stream) => {
                        self.clients.fetch_add(1, Ordering::SeqCst);
                        if active.load(Ordering::SeqCst) >= self.options.max_clients {
                            stream.shutdown();
                            continue;
                        }
                        active.fetch_add(1, Ordering::SeqCst);
                        let active = &active;
                        scope.spawn(move || {
                            // A client's failure (a hostile or broken peer)
                            // ends that client only.
                            match DiskReader::unlocked(self.vault, &self.point, &self.disk.name) {
                                Ok(reader) => {
                                    let mut s = Session::new(self, Wire::new(stream, self.options.timeout), reader);
                                    let _ = s.run(cancel);
                                    s.wire.stream().shutdown();
                                }
                                Err(e) => {
                                    self.record_error(format!("cannot open {e}"));
                                    stream.shutdown();
                                }
                            }
                            active.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    // Out of descriptors and the like: wait and go on.
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
            Ok(())
        })
    }
}

impl Drop for NbdServer<'_> {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = &self.listener {
            let _ = std::fs::remove_file(p);
        }
    }
}

const ALLOCATION_CTX_ID: u32 = 1;
const ALLOCATION: &str = "base:allocation";
/// Options a client may send before it must choose an export.
const MAX_OPTIONS: usize = 64;

struct Session<'a, 'v> {
    server: &'a NbdServer<'v>,
    wire: Wire,
    structured: bool,
    allocation: bool,
    reader: DiskReader<&'v Vault>,
}

impl<'a, 'v> Session<'a, 'v> {
    /// A session reading through `reader` (opened without a lock: the
    /// server holds the vault's shared lock for every session).
    fn new(server: &'a NbdServer<'v>, wire: Wire, reader: DiskReader<&'v Vault>) -> Self {
        Session { server, wire, structured: false, allocation: false, reader }
    }

    fn tflags(&self) -> u16 {
        TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_CAN_MULTI_CONN | TFLAG_SEND_CACHE
    }

    fn known_export(name: &[u8], disk: &str) -> bool {
        name.is_empty() || name == disk.as_bytes()
    }

    fn run(&mut self, cancel: &CancelToken) -> io::Result<()> {
        self.wire.begin();
        let mut hello = Vec::with_capacity(18);
        hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
        hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
        hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        self.wire.write_all(&hello)?;
        let cflags = self.wire.u32()?;
        if cflags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 || cflags & FLAG_C_FIXED_NEWSTYLE == 0 {
            return Err(bad(format!("client flags {cflags:#x}")));
        }
        let no_zeroes = cflags & FLAG_C_NO_ZEROES != 0;
        if self.options(no_zeroes)?.is_some() {
            self.transmission(cancel)?;
        }
        Ok(())
    }

    /// The option haggling; Some(()) when the client entered transmission.
    fn options(&mut self, no_zeroes: bool) -> io::Result<Option<()>> {
        let disk = self.server.disk.name.clone();
        let size = self.server.disk.size;
        for _ in 0..MAX_OPTIONS {
            self.wire.begin();
            if self.wire.u64()? != IHAVEOPT {
                return Err(bad("option without IHAVEOPT"));
            }
            let opt = self.wire.u32()?;
            let len = self.wire.u32()?;
            if len > MAX_OPTION_LEN {
                return Err(bad(format!("option of {len} bytes")));
            }
            let mut data = vec![0u8; len as usize];
            self.wire.read_exact(&mut data)?;
            match opt {
                OPT_EXPORT_NAME => {
                    if !Self::known_export(&data, &disk) {
                        return Ok(None);
                    }
                    let mut r = Vec::with_capacity(134);
                    r.extend_from_slice(&size.to_be_bytes());
                    r.extend_from_slice(&self.tflags().to_be_bytes());
                    if !no_zeroes {
                        r.extend_from_slice(&[0u8; 124]);
                    }
                    self.wire.write_all(&r)?;
                    return Ok(Some(()));
                }
                OPT_ABORT => {
                    let _ = self.wire.write_all(&option_reply(opt, REP_ACK, &[]));
                    return Ok(None);
                }
                OPT_LIST => {
                    if !data.is_empty() {
                        self.wire.write_all(&option_reply(opt, REP_ERR_INVALID, b"LIST takes no data"))?;
                        continue;
                    }
                    let mut d = (disk.len() as u32).to_be_bytes().to_vec();
                    d.extend_from_slice(disk.as_bytes());
                    self.wire.write_all(&option_reply(opt, REP_SERVER, &d))?;
                    self.wire.write_all(&option_reply(opt, REP_ACK, &[]))?;
                }
                OPT_STRUCTURED_REPLY => {
                    let kind = if data.is_empty() { REP_ACK } else { REP_ERR_INVALID };
                    self.structured |= data.is_empty();
                    self.wire.write_all(&option_reply(opt, kind, &[]))?;
                }
                OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                    let set = opt == OPT_SET_META_CONTEXT;
                    let parsed = parse_meta_query(&data);
                    let reply = match parsed {
                        Err(e) => Err((REP_ERR_INVALID, e.to_string())),
                        Ok(_) if set && !self.structured => {
                            Err((REP_ERR_INVALID, "SET_META_CONTEXT needs structured replies first".into()))
                        }
                        Ok((name, _)) if !Self::known_export(name.as_bytes(), &disk) => {
                            Err((REP_ERR_UNKNOWN, format!("no export {name:?}")))
                        }
                        Ok((_, queries)) => Ok(queries),
                    };
                    match reply {
                        Err((kind, msg)) => self.wire.write_all(&option_reply(opt, kind, msg.as_bytes()))?,
                        Ok(queries) => {
                            let matches = (queries.is_empty() && !set)
                                || queries.iter().any(|q| q == ALLOCATION || (!set && q == "base:"));
                            if set {
                                self.allocation = matches;
                            }
                            if matches {
                                let mut d = ALLOCATION_CTX_ID.to_be_bytes().to_vec();
                                d.extend_from_slice(ALLOCATION.as_bytes());
                                self.wire.write_all(&option_reply(opt, REP_META_CONTEXT, &d))?;
                            }
                            self.wire.write_all(&option_reply(opt, REP_ACK, &[]))?;
                        }
                    }
                }
                OPT_INFO | OPT_GO => {
                    let mut c = Cursor::new(&data, "GO option");
                    let parsed = (|| -> io::Result<(String, u16)> {
                        let n = c.u32()? as usize;
                        let name = c.string(n)?;
                        let count = c.u16()?;
                        c.take(usize::from(count) * 2)?;
                        if !c.is_empty() {
                            return Err(bad("trailing bytes"));
                        }
                        Ok((name, count))
                    })();
                    match parsed {
                        Err(e) => {
                            self.wire.write_all(&option_reply(opt, REP_ERR_INVALID, e.to_string().as_bytes()))?;
                        }
                        Ok((name, _)) if !Self::known_export(name.as_bytes(), &disk) => {
                            let msg = format!("no export {name:?}; this server exports {disk:?} (or \"\")");
                            self.wire.write_all(&option_reply(opt, REP_ERR_UNKNOWN, msg.as_bytes()))?;
                        }
                        Ok(_) => {
                            let mut d = INFO_EXPORT.to_be_bytes().to_vec();
                            d.extend_from_slice(&size.to_be_bytes());
                            d.extend_from_slice(&self.tflags().to_be_bytes());
                            self.wire.write_all(&option_reply(opt, REP_INFO, &d))?;
                            let mut b = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                            b.extend_from_slice(&1u32.to_be_bytes());
                            b.extend_from_slice(&4096u32.to_be_bytes());
                            b.extend_from_slice(&MAX_REQUEST_LEN.to_be_bytes());
                            self.wire.write_all(&option_reply(opt, REP_INFO, &b))?;
                            self.wire.write_all(&option_reply(opt, REP_ACK, &[]))?;
                            if opt == OPT_GO {
                                return Ok(Some(()));
                            }
                        }
                    }
                }
                _ => {
                    self.wire.write_all(&option_reply(opt, REP_ERR_UNSUP, b"unsupported option"))?;
                }
            }
        }
        Err(bad(format!("more than {MAX_OPTIONS} options without entering transmission")))
    }

    fn transmission(&mut self, cancel: &CancelToken) -> io::Result<()> {
        loop {
            while !self.wire.wait_readable(Duration::from_millis(200))? {
                if cancel.is_cancelled() {
                    return Ok(());
                }
            }
            self.wire.begin();
            let mut h = [0u8; 28];
            self.wire.read_exact(&mut h)?;
            let r = parse_request(&h)?;
            match r.kind {
                CMD_DISC => return Ok(()),
                CMD_READ => self.read(&r)?,
                CMD_BLOCK_STATUS => self.block_status(&r)?,
                CMD_WRITE => {
                    if r.len > MAX_REQUEST_LEN {
                        return Err(bad("write payload too large"));
                    }
                    self.wire.skip(u64::from(r.len))?;
                    self.error(&r, EPERM, "the export is read-only")?;
                }
                CMD_TRIM | CMD_WRITE_ZEROES => self.error(&r, EPERM, "the export is read-only")?,
                CMD_FLUSH | CMD_CACHE => self.wire.write_all(&simple_reply(0, r.cookie))?,
                _ => self.error(&r, EINVAL, "unknown command")?,
            }
        }
    }

    fn error(&mut self, r: &Request, err: u32, msg: &str) -> io::Result<()> {
        if self.structured && (r.kind == CMD_READ || r.kind == CMD_BLOCK_STATUS) {
            let msg = &msg.as_bytes()[..msg.len().min(4096)];
            let mut p = err.to_be_bytes().to_vec();
            p.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            p.extend_from_slice(msg);
            let mut out = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, r.cookie, p.len() as u32).to_vec();
            out.extend_from_slice(&p);
            self.wire.write_all(&out)
        } else {
            self.wire.write_all(&simple_reply(err, r.cookie))
        }
    }

    fn check_range(&self, r: &Request) -> Option<&'static str> {
        let size = self.server.disk.size;
        if r.len == 0 {
            Some("zero length")
        } else if r.len > MAX_REQUEST_LEN && r.kind == CMD_READ {
            Some("request longer than the maximum block size")
        } else if r.offset.checked_add(u64::from(r.len)).is_none_or(|e| e > size) && r.kind == CMD_READ {
            Some("request past the end of the export")
        } else if r.offset >= size {
            Some("offset past the end of the export")
        } else {
            None
        }
    }

    /// What a client is told (and `last_error` keeps) of a failed read:
    /// the disk's byte range, then why.
    fn damaged(&self, e: &Error) -> String {
        let msg = match e {
            Error::Corrupt { object, detail } | Error::Tampered { object, detail } => {
                format!("{object} cannot be read: {detail}")
            }
            Error::Io { path, source, .. } => format!("{} cannot be read: {source}", path.display()),
            other => format!("{other} (the read cannot be served)"),
        };
        self.server.record_error(msg.clone());
        msg
    }

    fn read(&mut self, r: &Request) -> io::Result<()> {
        if let Some(why) = self.check_range(r) {
            return self.error(r, EINVAL, why);
        }
        let pieces = match self.reader.pieces(r.offset, u64::from(r.len)) {
            Ok(p) => p,
            Err(e) => {
                let msg = self.damaged(&e);
                return self.error(r, EIO, &msg);
            }
        };
        if !self.structured {
            let mut out = simple_reply(0, r.cookie).to_vec();
            for (_, n, data) in pieces {
                match data {
                    Some(d) => out.extend_from_slice(&d),
                    None => out.resize(out.len() + n as usize, 0),
                }
            }
            return self.wire.write_all(&out);
        }
        let last = pieces.len() - 1;
        for (k, (at, n, data)) in pieces.into_iter().enumerate() {
            let flags = if k == last { REPLY_FLAG_DONE } else { 0 };
            match data {
                Some(d) => {
                    let mut out = chunk_header(flags, REPLY_TYPE_OFFSET_DATA, r.cookie, 8 + n as u32).to_vec();
                    out.extend_from_slice(&at.to_be_bytes());
                    out.extend_from_slice(&d);
                    self.wire.write_all(&out)?;
                }
                None => {
                    let mut out = chunk_header(flags, REPLY_TYPE_OFFSET_HOLE, r.cookie, 12).to_vec();
                    out.extend_from_slice(&at.to_be_bytes());
                    out.extend_from_slice(&(n as u32).to_be_bytes());
                    self.wire.write_all(&out)?;
                }
            }
        }
        Ok(())
    }

    fn block_status(&mut self, r: &Request) -> io::Result<()> {
        if !self.structured || !self.allocation {
            return self.error(r, EINVAL, "no metadata context selected");
        }
        if let Some(why) = self.check_range(r) {
            return self.error(r, EINVAL, why);
        }
        let bs = u64::from(self.server.disk.block_size);
        let size = self.server.disk.size;
        // Describe at most 1 GiB per reply: the client asks again for more.
        let end = (r.offset + u64::from(r.len)).min(size).min(r.offset + (1 << 30));
        let mut ext: Vec<(u64, u32)> = Vec::new();
        let mut at = r.offset;
        while at < end {
            let i = at / bs;
            let n = ((i + 1) * bs).min(end) - at;
            let flags = match self.reader.is_zero_block(i) {
                Ok(true) => STATE_HOLE | STATE_ZERO,
                Ok(false) => 0,
                Err(e) => {
                    let msg = self.damaged(&e);
                    return self.error(r, EIO, &msg);
                }
            };
            match ext.last_mut() {
                Some((l, f)) if *f == flags => *l += n,
                _ => {
                    if r.flags & CMD_FLAG_REQ_ONE != 0 && !ext.is_empty() {
                        break;
                    }
                    ext.push((n, flags));
                }
            }
            at += n;
        }
        let mut p = ALLOCATION_CTX_ID.to_be_bytes().to_vec();
        for (l, f) in &ext {
            p.extend_from_slice(&(*l as u32).to_be_bytes());
            p.extend_from_slice(&f.to_be_bytes());
        }
        let mut out = chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, r.cookie, p.len() as u32).to_vec();
        out.extend_from_slice(&p);
        self.wire.write_all(&out)
    }
}

/// Parses the data of `NBD_OPT_{LIST,SET}_META_CONTEXT`: export name and
/// queries.
fn parse_meta_query(data: &[u8]) -> io::Result<(String, Vec<String>)> {
    let mut c = Cursor::new(data, "meta context option");
    let n = c.u32()? as usize;
    let name = c.string(n)?;
    let count = c.u32()?;
    if count > 1024 {
        return Err(bad(format!("{count} queries")));
    }
    let mut q = Vec::new();
    for _ in 0..count {
        let n = c.u32()? as usize;
        q.push(c.string(n)?);
    }
    if !c.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok((name, q))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_queries_parse_and_reject() {
        let mut d = 0u32.to_be_bytes().to_vec();
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(&15u32.to_be_bytes());
        d.extend_from_slice(b"base:allocation");
        assert_eq!(parse_meta_query(&d).expect("ok"), (String::new(), vec![ALLOCATION.to_string()]));
        assert!(parse_meta_query(&d[..d.len() - 1]).is_err());
        let mut big = 0u32.to_be_bytes().to_vec();
        big.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_meta_query(&big).is_err());
    }
}
