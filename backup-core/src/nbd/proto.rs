//! The NBD wire format (fixed newstyle handshake, structured replies, block
//! status), as the protocol's spec (`doc/proto.md` of the NBD project)
//! defines it: every integer is big-endian.
//!
//! ```text
//! handshake   server: "NBDMAGIC" u64 IHAVEOPT u16 flags        client: u32 flags
//! option      client: u64 IHAVEOPT u32 option u32 len data
//! opt reply   server: u64 REPLY_MAGIC u32 option u32 type u32 len data
//! request     client: u32 REQUEST_MAGIC u16 flags u16 type u64 cookie u64 offset u32 len [data]
//! simple      server: u32 SIMPLE_MAGIC u32 error u64 cookie [data]
//! chunk       server: u32 STRUCTURED_MAGIC u16 flags u16 type u64 cookie u32 len payload
//! ```
//!
//! Also here: [`Wire`], a socket whose every read and write must finish
//! before a deadline, so that a peer that stalls is an error, never a hang.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// "NBDMAGIC" as a big-endian integer.
pub const NBDMAGIC: u64 = u64::from_be_bytes(*b"NBDMAGIC");
/// "IHAVEOPT": the newstyle handshake and every option carry it.
pub const IHAVEOPT: u64 = u64::from_be_bytes(*b"IHAVEOPT");
/// The old-style handshake's second magic (refused: it has no options).
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// The magic of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// The magic of a request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// The magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// The magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// The server skips the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 2;
/// Client flags.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1;
/// The client asks for no 124 zero bytes.
pub const FLAG_C_NO_ZEROES: u32 = 2;

/// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1;
/// The export is read-only.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// Several connections to the export see the same data.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// The server supports `NBD_CMD_CACHE`.
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
/// Ends the handshake without an export.
pub const OPT_ABORT: u32 = 2;
/// Lists the exports.
pub const OPT_LIST: u32 = 3;
/// Asks about an export without entering transmission.
pub const OPT_INFO: u32 = 6;
/// Asks for an export and enters transmission.
pub const OPT_GO: u32 = 7;
/// Asks for structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Lists the metadata contexts matching queries.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Selects the metadata contexts for block status.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types.
pub const REP_ACK: u32 = 1;
/// One export's name, for `NBD_OPT_LIST`.
pub const REP_SERVER: u32 = 2;
/// An `NBD_INFO_*` item.
pub const REP_INFO: u32 = 3;
/// A selected metadata context: u32 id, name.
pub const REP_META_CONTEXT: u32 = 4;
/// Bit 31 marks an error reply.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// The option is unknown to the server.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
/// The option is invalid (bad length, a request out of order).
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
/// The export is unknown.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;

/// Info types.
pub const INFO_EXPORT: u16 = 0;
/// The export's block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Commands.
pub const CMD_READ: u16 = 0;
/// Write (refused by the export server).
pub const CMD_WRITE: u16 = 1;
/// Disconnect.
pub const CMD_DISC: u16 = 2;
/// Flush.
pub const CMD_FLUSH: u16 = 3;
/// Trim (refused by the export server).
pub const CMD_TRIM: u16 = 4;
/// Cache (a hint).
pub const CMD_CACHE: u16 = 5;
/// Write zeroes (refused by the export server).
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Block status.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Command flag of block status: one extent is enough.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

/// Structured reply flag: the last chunk of a reply.
pub const REPLY_FLAG_DONE: u16 = 1;
/// Chunk types.
pub const REPLY_TYPE_NONE: u16 = 0;
/// u64 offset, data.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// u64 offset, u32 length of zeros.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// u32 context id, then (u32 length, u32 flags) descriptors.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// u32 error, u16 message length, message.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;

/// `base:allocation`: not allocated.
pub const STATE_HOLE: u32 = 1;
/// `base:allocation`: reads as zeros.
pub const STATE_ZERO: u32 = 2;
/// `qemu:dirty-bitmap:NAME`: the extent is dirty.
pub const STATE_DIRTY: u32 = 1;

/// Error numbers on the wire.
pub const EPERM: u32 = 1;
/// I/O error.
pub const EIO: u32 = 5;
/// Invalid argument.
pub const EINVAL: u32 = 22;
/// Value too large.
pub const EOVERFLOW: u32 = 75;
/// Not supported.
pub const ENOTSUP: u32 = 95;

/// The largest option payload either side accepts: names and queries are
/// at most 4 KiB by the spec; this leaves room and refuses absurd lengths.
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// The largest read or block-status request sent or served.
pub const MAX_REQUEST_LEN: u32 = 32 << 20;
/// The largest payload of a chunk that carries no read data.
pub const MAX_CHUNK_META_LEN: u32 = 1 << 20;
/// The longest export name or metadata context name.
pub const MAX_NAME_LEN: usize = 4096;

/// The name of an error number, for messages.
pub fn errno_name(e: u32) -> &'static str {
    match e {
        EPERM => "EPERM (operation not permitted)",
        EIO => "EIO (input/output error)",
        12 => "ENOMEM",
        EINVAL => "EINVAL (invalid argument)",
        28 => "ENOSPC",
        EOVERFLOW => "EOVERFLOW",
        ENOTSUP => "ENOTSUP (not supported)",
        108 => "ESHUTDOWN (server shutting down)",
        _ => "unknown error",
    }
}

/// A protocol violation by the peer, as an I/O error.
pub fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A big-endian reader over a byte slice that fails instead of panicking.
pub struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    /// Reads `buf`, naming `what` in errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Cursor { buf, what }
    }
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(bad(format!("{} is truncated: {} bytes left, {n} needed", self.what, self.buf.len())));
        }
        let (h, t) = self.buf.split_at(n);
        self.buf = t;
        Ok(h)
    }
    /// A u16.
    pub fn u16(&mut self) -> io::Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    /// A u32.
    pub fn u32(&mut self) -> io::Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A u64.
    pub fn u64(&mut self) -> io::Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    /// A string of `n` bytes, UTF-8, at most [`MAX_NAME_LEN`].
    pub fn string(&mut self, n: usize) -> io::Result<String> {
        if n > MAX_NAME_LEN {
            return Err(bad(format!("{}: a name of {n} bytes (at most {MAX_NAME_LEN})", self.what)));
        }
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| bad(format!("{}: a name is not UTF-8", self.what)))
    }
    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// A connected socket.
#[derive(Debug)]
pub enum Stream {
    /// A unix socket.
    Unix(UnixStream),
    /// A TCP connection.
    Tcp(TcpStream),
}

impl Stream {
    fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(d),
            Stream::Tcp(s) => s.set_read_timeout(d),
        }
    }
    fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(d),
            Stream::Tcp(s) => s.set_write_timeout(d),
        }
    }
    /// Shuts both directions down.
    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

/// A socket whose operations must each finish before a deadline set by
/// [`begin`](Wire::begin): a peer that sends a byte a second still times
/// out, because the deadline is for the whole reply, not for each read.
#[derive(Debug)]
pub struct Wire {
    stream: Stream,
    timeout: Duration,
    deadline: Instant,
    /// Whether the socket's read timeout must be set before the next read.
    set_timeout: Option<Duration>,
}

impl Wire {
    /// Wraps a connected stream; each exchange gets `timeout`.
    pub fn new(stream: Stream, timeout: Duration) -> Self {
        Wire { stream, timeout, deadline: Instant::now() + timeout, set_timeout: None }
    }
    /// Changes the timeout of the exchanges to come.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }
    /// The stream.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }
    /// Starts an exchange: everything until the next `begin` must finish
    /// within the timeout.
    pub fn begin(&mut self) {
        self.deadline = Instant::now() + self.timeout;
    }
    /// Waits without a deadline for the next read (a server waiting for a
    /// client's next request), with `poll` as the socket's timeout so the
    /// caller can look at a cancel flag between tries.
    pub fn wait_readable(&mut self, poll: Duration) -> io::Result<bool> {
        self.stream.set_read_timeout(Some(poll))?;
        self.set_timeout = None;
        // Peek one byte: the request stays queued for read_exact.
        let r = match &self.stream {
            Stream::Unix(s) => {
                let mut b = [0u8; 1];
                // SAFETY: recv on a descriptor owned by `s`, into a live
                // one-byte buffer; MSG_PEEK leaves the byte queued.
                let n =
                    unsafe { libc::recv(std::os::fd::AsRawFd::as_raw_fd(s), b.as_mut_ptr().cast(), 1, libc::MSG_PEEK) };
                if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
            }
            Stream::Tcp(s) => s.peek(&mut [0u8; 1]),
        };
        match r {
            Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed the connection")),
            Ok(_) => Ok(true),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
            Err(e) => Err(e),
        }
    }
    /// Reads exactly `buf.len()` bytes before the deadline.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut off = 0;
        while off < buf.len() {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timed_out());
            }
            // Setting the timeout costs a system call; round it so that a
            // stream of reads sets it rarely, never past the deadline.
            let t = left.max(Duration::from_millis(1));
            if self.set_timeout.is_none_or(|cur| cur > t || cur + Duration::from_millis(200) < t) {
                self.stream.set_read_timeout(Some(t))?;
                self.set_timeout = Some(t);
            }
            match self.stream.read(&mut buf[off..]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("peer closed the connection ({off} of {} bytes of a message read)", buf.len()),
                    ));
                }
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(self.timed_out());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    /// Reads and discards `n` bytes.
    pub fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let mut scratch = [0u8; 8192];
        while n > 0 {
            let k = n.min(scratch.len() as u64) as usize;
            self.read_exact(&mut scratch[..k])?;
            n -= k as u64;
        }
        Ok(())
    }
    /// A u16.
    pub fn u16(&mut self) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.read_exact(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }
    /// A u32.
    pub fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }
    /// A u64.
    pub fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }
    /// Writes all of `buf` within the timeout.
    pub fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.stream.set_write_timeout(Some(self.timeout))?;
        self.stream.write_all(buf).map_err(|e| {
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) { self.timed_out() } else { e }
        })
    }
    fn timed_out(&self) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, format!("no complete reply within {:?}", self.timeout))
    }
}

/// An option: IHAVEOPT, option, length, data.
pub fn option(opt: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + data.len());
    v.extend_from_slice(&IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&opt.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// An option reply header and its data.
pub fn option_reply(opt: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + data.len());
    v.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&opt.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// A request header (28 bytes).
pub fn request(flags: u16, kind: u16, cookie: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..28].copy_from_slice(&len.to_be_bytes());
    b
}

/// A parsed request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command.
    pub kind: u16,
    /// The client's cookie, echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Length.
    pub len: u32,
}

/// Parses a request header.
pub fn parse_request(b: &[u8; 28]) -> io::Result<Request> {
    let mut c = Cursor::new(b, "request");
    let magic = c.u32()?;
    if magic != REQUEST_MAGIC {
        return Err(bad(format!("request magic {magic:#010x}, expected {REQUEST_MAGIC:#010x}")));
    }
    Ok(Request { flags: c.u16()?, kind: c.u16()?, cookie: c.u64()?, offset: c.u64()?, len: c.u32()? })
}

/// A structured reply chunk header (20 bytes).
pub fn chunk_header(flags: u16, kind: u16, cookie: u64, len: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    b
}

/// A simple reply header (16 bytes).
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// Parses the payload of a block-status chunk: the context id and the
/// extents, clipped to `want` bytes; every extent must be non-empty.
pub fn parse_block_status(payload: &[u8], want: u64) -> io::Result<(u32, Vec<(u64, u32)>)> {
    if payload.len() < 12 || !(payload.len() - 4).is_multiple_of(8) {
        return Err(bad(format!("block status chunk of {} bytes (4 + 8n, n >= 1)", payload.len())));
    }
    let mut c = Cursor::new(payload, "block status chunk");
    let id = c.u32()?;
    let mut out = Vec::new();
    let mut total = 0u64;
    while !c.is_empty() && total < want {
        let len = u64::from(c.u32()?);
        let flags = c.u32()?;
        if len == 0 {
            return Err(bad("block status extent of length 0"));
        }
        let len = len.min(want - total);
        total += len;
        out.push((len, flags));
    }
    Ok((id, out))
}

/// Parses the payload of an error chunk: the error number and message.
pub fn parse_error_chunk(payload: &[u8]) -> io::Result<(u32, String)> {
    let mut c = Cursor::new(payload, "error chunk");
    let err = c.u32()?;
    let n = c.u16()? as usize;
    let msg = c.take(n)?;
    Ok((err, String::from_utf8_lossy(msg).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_match_the_spec() {
        assert_eq!(NBDMAGIC, 0x4e42_444d_4147_4943);
        assert_eq!(IHAVEOPT, 0x4948_4156_454f_5054);
    }

    #[test]
    fn cursor_errors_instead_of_panicking() {
        let mut c = Cursor::new(&[1, 2, 3], "x");
        assert_eq!(c.u16().ok(), Some(0x0102));
        assert!(c.u32().is_err());
        assert!(Cursor::new(&[0xff, 0xfe], "x").string(2).is_err());
        assert!(Cursor::new(&[], "x").string(MAX_NAME_LEN + 1).is_err());
    }

    #[test]
    fn request_round_trip_and_bad_magic() {
        let b = request(CMD_FLAG_REQ_ONE, CMD_READ, 7, 4096, 512);
        let r = parse_request(&b).expect("parses");
        assert_eq!((r.flags, r.kind, r.cookie, r.offset, r.len), (CMD_FLAG_REQ_ONE, CMD_READ, 7, 4096, 512));
        let mut b2 = b;
        b2[0] ^= 1;
        assert!(parse_request(&b2).is_err());
    }

    #[test]
    fn block_status_parses_clips_and_rejects() {
        let mut p = 9u32.to_be_bytes().to_vec();
        for (l, f) in [(4096u32, 0u32), (8192, 3)] {
            p.extend_from_slice(&l.to_be_bytes());
            p.extend_from_slice(&f.to_be_bytes());
        }
        assert_eq!(parse_block_status(&p, 1 << 20).expect("ok"), (9, vec![(4096, 0), (8192, 3)]));
        assert_eq!(parse_block_status(&p, 5000).expect("ok"), (9, vec![(4096, 0), (904, 3)]));
        assert!(parse_block_status(&p[..10], 1 << 20).is_err());
        assert!(parse_block_status(&p[..4], 1 << 20).is_err());
        let mut z = 1u32.to_be_bytes().to_vec();
        z.extend_from_slice(&[0; 8]);
        assert!(parse_block_status(&z, 100).is_err());
    }

    #[test]
    fn error_chunk_parses_and_rejects_long_message() {
        let mut p = EIO.to_be_bytes().to_vec();
        p.extend_from_slice(&3u16.to_be_bytes());
        p.extend_from_slice(b"bad");
        assert_eq!(parse_error_chunk(&p).expect("ok"), (EIO, "bad".to_string()));
        p[5] = 200;
        assert!(parse_error_chunk(&p).is_err());
    }
}
