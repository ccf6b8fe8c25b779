//! The NBD client: one connection, one request in flight.
//!
//! Every exchange has a deadline (see [`Wire`]); every length from the
//! server is checked against what was asked and capped before anything is
//! allocated; every reply must echo the request's cookie. A connection that
//! saw any error is dropped by its owner, never reused.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::NbdAddress;
use super::proto::*;

/// What the handshake settled.
#[derive(Debug, Clone)]
pub(crate) struct Negotiated {
    pub size: u64,
    pub flags: u16,
    pub max_block: u32,
    pub structured: bool,
    /// Selected metadata contexts: id and name.
    pub contexts: Vec<(u32, String)>,
}

/// Block status extents of one context: (length, flags), in order.
pub(crate) type Extents = Vec<(u64, u32)>;

/// One NBD connection in transmission phase.
#[derive(Debug)]
pub(crate) struct NbdClient {
    wire: Wire,
    pub neg: Negotiated,
    cookie: u64,
}

/// Connects a socket to `addr`, within `timeout`.
fn connect(addr: &NbdAddress, timeout: Duration) -> io::Result<Stream> {
    match addr {
        NbdAddress::Unix { socket, .. } => Ok(Stream::Unix(UnixStream::connect(socket)?)),
        NbdAddress::Tcp { host, port, .. } => {
            let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} resolves to no address"));
            for a in (host.as_str(), *port).to_socket_addrs()? {
                match TcpStream::connect_timeout(&a, timeout) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        return Ok(Stream::Tcp(s));
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
    }
}

impl NbdClient {
    /// Connects, negotiates structured replies and the metadata `contexts`
    /// asked for (those the server lacks are simply not selected), and
    /// enters transmission on the address's export.
    pub fn connect(addr: &NbdAddress, contexts: &[String], timeout: Duration) -> io::Result<NbdClient> {
        let stream = connect(addr, timeout)?;
        let mut wire = Wire::new(stream, timeout);
        let neg = handshake(&mut wire, addr.export(), contexts)?;
        Ok(NbdClient { wire, neg, cookie: 0 })
    }

    /// A client over a connection whose handshake is done (the fuzz
    /// target drives one over a socket pair).
    pub(crate) fn from_parts(wire: Wire, neg: Negotiated) -> NbdClient {
        NbdClient { wire, neg, cookie: 0 }
    }

    /// Changes the timeout of the exchanges to come.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.wire.set_timeout(timeout);
    }

    fn next_cookie(&mut self) -> u64 {
        self.cookie = self.cookie.wrapping_add(1);
        self.cookie
    }

    /// Reads `buf.len()` bytes at `offset` (at most the negotiated maximum).
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let len = u32::try_from(buf.len()).map_err(|_| bad("read too large"))?;
        if len == 0 {
            return Ok(());
        }
        if offset.checked_add(u64::from(len)).is_none_or(|end| end > self.neg.size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("read of {len} bytes at {offset} is past the export's end ({})", self.neg.size),
            ));
        }
        let cookie = self.next_cookie();
        self.wire.begin();
        self.wire.write_all(&request(0, CMD_READ, cookie, offset, len))?;
        let mut covered: Vec<(u64, u64)> = Vec::new();
        let mut error: Option<io::Error> = None;
        loop {
            let magic = self.wire.u32()?;
            if magic == SIMPLE_REPLY_MAGIC {
                let err = self.wire.u32()?;
                check_cookie(self.wire.u64()?, cookie)?;
                if err != 0 {
                    return Err(server_error(err, "", offset));
                }
                // A server without structured replies sends the data
                // right after the header.
                self.wire.read_exact(buf)?;
                return Ok(());
            }
            if magic != STRUCTURED_REPLY_MAGIC || !self.neg.structured {
                return Err(bad(format!(
                    "reply magic {magic:#010x} is neither a simple nor a negotiated structured reply"
                )));
            }
            let flags = self.wire.u16()?;
            let kind = self.wire.u16()?;
            check_cookie(self.wire.u64()?, cookie)?;
            let clen = self.wire.u32()?;
            match kind {
                REPLY_TYPE_OFFSET_DATA => {
                    if clen <= 8 || clen - 8 > len {
                        return Err(bad(format!("data chunk of {clen} bytes for a read of {len}")));
                    }
                    let at = self.wire.u64()?;
                    let n = u64::from(clen - 8);
                    let start = in_request(at, n, offset, len)?;
                    self.wire.read_exact(&mut buf[start..start + n as usize])?;
                    covered.push((at, n));
                }
                REPLY_TYPE_OFFSET_HOLE => {
                    if clen != 12 {
                        return Err(bad(format!("hole chunk of {clen} bytes (12 expected)")));
                    }
                    let at = self.wire.u64()?;
                    let n = u64::from(self.wire.u32()?);
                    let start = in_request(at, n, offset, len)?;
                    buf[start..start + n as usize].fill(0);
                    covered.push((at, n));
                }
                REPLY_TYPE_NONE => {
                    if clen != 0 || flags & REPLY_FLAG_DONE == 0 {
                        return Err(bad("a NONE chunk must be empty and the last"));
                    }
                }
                k if k & 0x8000 != 0 => {
                    if !(6..=MAX_CHUNK_META_LEN).contains(&clen) {
                        return Err(bad(format!("error chunk of {clen} bytes")));
                    }
                    let mut p = vec![0u8; clen as usize];
                    self.wire.read_exact(&mut p)?;
                    let (err, msg) = parse_error_chunk(&p)?;
                    error.get_or_insert(server_error(err, &msg, offset));
                }
                k => return Err(bad(format!("unexpected chunk type {k} in the reply to a read"))),
            }
            if flags & REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        if let Some(e) = error {
            return Err(e);
        }
        check_coverage(&mut covered, offset, u64::from(len))
    }

    /// Asks block status for `len` bytes at `offset`: the extents of each
    /// selected context (id, extents of (length, flags)), each clipped to
    /// the request. The server may describe less than asked.
    pub fn block_status(&mut self, offset: u64, len: u32) -> io::Result<Vec<(u32, Extents)>> {
        if !self.neg.structured || self.neg.contexts.is_empty() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "no metadata context negotiated"));
        }
        let cookie = self.next_cookie();
        self.wire.begin();
        self.wire.write_all(&request(0, CMD_BLOCK_STATUS, cookie, offset, len))?;
        let mut out: Vec<(u32, Extents)> = Vec::new();
        let mut error = None;
        loop {
            let magic = self.wire.u32()?;
            if magic == SIMPLE_REPLY_MAGIC {
                let err = self.wire.u32()?;
                check_cookie(self.wire.u64()?, cookie)?;
                return Err(if err != 0 {
                    server_error(err, "", offset)
                } else {
                    bad("block status answered without extents")
                });
            }
            if magic != STRUCTURED_REPLY_MAGIC {
                return Err(bad(format!("reply magic {magic:#010x} is not a structured reply")));
            }
            let flags = self.wire.u16()?;
            let kind = self.wire.u16()?;
            check_cookie(self.wire.u64()?, cookie)?;
            let clen = self.wire.u32()?;
            if clen > MAX_CHUNK_META_LEN {
                return Err(bad(format!("block status chunk of {clen} bytes (at most {MAX_CHUNK_META_LEN})")));
            }
            let mut p = vec![0u8; clen as usize];
            self.wire.read_exact(&mut p)?;
            match kind {
                REPLY_TYPE_BLOCK_STATUS => {
                    let (id, ext) = parse_block_status(&p, u64::from(len))?;
                    if !self.neg.contexts.iter().any(|(c, _)| *c == id) {
                        return Err(bad(format!("block status for context {id}, which was never selected")));
                    }
                    if out.iter().any(|(c, _)| *c == id) {
                        return Err(bad(format!("two block status chunks for context {id}")));
                    }
                    out.push((id, ext));
                }
                REPLY_TYPE_NONE if clen == 0 => {}
                k if k & 0x8000 != 0 => {
                    let (err, msg) = parse_error_chunk(&p)?;
                    error.get_or_insert(server_error(err, &msg, offset));
                }
                k => return Err(bad(format!("unexpected chunk type {k} in the reply to block status"))),
            }
            if flags & REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        if let Some(e) = error {
            return Err(e);
        }
        Ok(out)
    }

    /// Says goodbye (`NBD_CMD_DISC`); no reply comes.
    pub fn disconnect(mut self) {
        let c = self.next_cookie();
        self.wire.begin();
        let _ = self.wire.write_all(&request(0, CMD_DISC, c, 0, 0));
        self.wire.stream().shutdown();
    }
}

fn check_cookie(got: u64, want: u64) -> io::Result<()> {
    if got != want {
        return Err(bad(format!("reply for cookie {got}, expected {want}")));
    }
    Ok(())
}

/// The index in the read buffer of a chunk of `n` bytes at `at`, which must
/// lie inside the request.
fn in_request(at: u64, n: u64, offset: u64, len: u32) -> io::Result<usize> {
    let end = at.checked_add(n).ok_or_else(|| bad("chunk offset overflows"))?;
    if n == 0 || at < offset || end > offset + u64::from(len) {
        return Err(bad(format!("chunk {at}+{n} lies outside the read {offset}+{len}")));
    }
    Ok((at - offset) as usize)
}

/// The chunks must tile the request exactly: no gap, no overlap.
fn check_coverage(covered: &mut [(u64, u64)], offset: u64, len: u64) -> io::Result<()> {
    covered.sort_unstable();
    let mut at = offset;
    for &(o, n) in covered.iter() {
        if o != at {
            return Err(bad(format!("read reply {} at byte {at}", if o > at { "leaves a gap" } else { "overlaps" })));
        }
        at += n;
    }
    if at != offset + len {
        return Err(bad(format!("read reply covers {} of {len} bytes", at - offset)));
    }
    Ok(())
}

fn server_error(err: u32, msg: &str, offset: u64) -> io::Error {
    let kind = if err == EINVAL || err == EOVERFLOW { io::ErrorKind::InvalidInput } else { io::ErrorKind::Other };
    let sep = if msg.is_empty() { "" } else { ": " };
    io::Error::new(kind, format!("server error {err} {} at byte {offset}{sep}{msg}", errno_name(err)))
}

/// Reads one option reply to `opt`: type and data (capped).
fn option_reply_read(w: &mut Wire, opt: u32) -> io::Result<(u32, Vec<u8>)> {
    let magic = w.u64()?;
    if magic != OPT_REPLY_MAGIC {
        return Err(bad(format!("option reply magic {magic:#018x}, expected {OPT_REPLY_MAGIC:#018x}")));
    }
    let o = w.u32()?;
    if o != opt {
        return Err(bad(format!("reply to option {o}, but option {opt} was sent")));
    }
    let kind = w.u32()?;
    let len = w.u32()?;
    if len > MAX_OPTION_LEN {
        return Err(bad(format!("option reply of {len} bytes (at most {MAX_OPTION_LEN})")));
    }
    let mut data = vec![0u8; len as usize];
    w.read_exact(&mut data)?;
    Ok((kind, data))
}

fn option_refused(opt: &str, kind: u32, data: &[u8]) -> io::Error {
    let msg = String::from_utf8_lossy(data);
    let what = match kind {
        REP_ERR_UNSUP => "unsupported",
        0x8000_0002 => "refused by policy",
        REP_ERR_INVALID => "invalid",
        0x8000_0005 => "needs TLS",
        REP_ERR_UNKNOWN => "unknown export",
        0x8000_0007 => "server shutting down",
        _ => "refused",
    };
    io::Error::other(format!("{opt}: {what} (reply {kind:#x}){}{msg}", if msg.is_empty() { "" } else { ": " }))
}

/// The fixed newstyle handshake, through `NBD_OPT_GO`.
pub(crate) fn handshake(w: &mut Wire, export: &str, contexts: &[String]) -> io::Result<Negotiated> {
    w.begin();
    let magic = w.u64()?;
    if magic != NBDMAGIC {
        return Err(bad(format!("not an NBD server: greeting magic {magic:#018x}")));
    }
    let style = w.u64()?;
    if style == OLDSTYLE_MAGIC {
        return Err(bad("the server speaks the old-style handshake, which has no options"));
    }
    if style != IHAVEOPT {
        return Err(bad(format!("handshake magic {style:#018x}, expected IHAVEOPT")));
    }
    let sflags = w.u16()?;
    if sflags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(bad("the server does not speak the fixed newstyle handshake"));
    }
    let mut cflags = FLAG_C_FIXED_NEWSTYLE;
    if sflags & FLAG_NO_ZEROES != 0 {
        cflags |= FLAG_C_NO_ZEROES;
    }
    w.write_all(&cflags.to_be_bytes())?;

    w.begin();
    w.write_all(&option(OPT_STRUCTURED_REPLY, &[]))?;
    let (kind, data) = option_reply_read(w, OPT_STRUCTURED_REPLY)?;
    let structured = match kind {
        REP_ACK => true,
        k if k & REP_FLAG_ERROR != 0 => false,
        k => return Err(option_refused("structured replies", k, &data)),
    };

    let mut selected = Vec::new();
    if structured && !contexts.is_empty() {
        let mut d = Vec::new();
        d.extend_from_slice(&(export.len() as u32).to_be_bytes());
        d.extend_from_slice(export.as_bytes());
        d.extend_from_slice(&(contexts.len() as u32).to_be_bytes());
        for c in contexts {
            d.extend_from_slice(&(c.len() as u32).to_be_bytes());
            d.extend_from_slice(c.as_bytes());
        }
        w.begin();
        w.write_all(&option(OPT_SET_META_CONTEXT, &d))?;
        loop {
            let (kind, data) = option_reply_read(w, OPT_SET_META_CONTEXT)?;
            match kind {
                REP_META_CONTEXT => {
                    let mut c = Cursor::new(&data, "meta context reply");
                    let id = c.u32()?;
                    let name = c.string(data.len() - 4)?;
                    if !contexts.contains(&name) {
                        return Err(bad(format!("the server selected context {name:?}, which was not asked for")));
                    }
                    if selected.len() > contexts.len() {
                        return Err(bad("more contexts selected than asked for"));
                    }
                    selected.push((id, name));
                }
                REP_ACK => break,
                // No metadata contexts: maps are simply unavailable.
                k if k & REP_FLAG_ERROR != 0 => break,
                k => return Err(bad(format!("unexpected reply {k} to SET_META_CONTEXT"))),
            }
        }
    }

    let mut d = Vec::new();
    d.extend_from_slice(&(export.len() as u32).to_be_bytes());
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    w.begin();
    w.write_all(&option(OPT_GO, &d))?;
    let mut export_info = None;
    let mut max_block = MAX_REQUEST_LEN;
    loop {
        let (kind, data) = option_reply_read(w, OPT_GO)?;
        match kind {
            REP_INFO => {
                let mut c = Cursor::new(&data, "info reply");
                match c.u16()? {
                    INFO_EXPORT => export_info = Some((c.u64()?, c.u16()?)),
                    INFO_BLOCK_SIZE => {
                        let _min = c.u32()?;
                        let _pref = c.u32()?;
                        let max = c.u32()?;
                        if max < 512 {
                            return Err(bad(format!("maximum block size {max} is under 512")));
                        }
                        max_block = max_block.min(max);
                    }
                    _ => {} // Info the client did not ask for is ignored, as the spec says.
                }
            }
            REP_ACK => break,
            k if k & REP_FLAG_ERROR != 0 => {
                return Err(option_refused(&format!("export {export:?}"), k, &data));
            }
            k => return Err(bad(format!("unexpected reply {k} to GO"))),
        }
    }
    let (size, flags) = export_info.ok_or_else(|| bad("GO succeeded without NBD_INFO_EXPORT"))?;
    if size > i64::MAX as u64 {
        return Err(bad(format!("export size {size} is absurd")));
    }
    Ok(Negotiated { size, flags, max_block: max_block & !511, structured, contexts: selected })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_must_tile_the_request() {
        assert!(check_coverage(&mut [(10, 5), (0, 10)], 0, 15).is_ok());
        assert!(check_coverage(&mut [(0, 10)], 0, 15).is_err());
        assert!(check_coverage(&mut [(0, 10), (5, 10)], 0, 15).is_err());
        assert!(check_coverage(&mut [(0, 10), (11, 4)], 0, 15).is_err());
        assert!(check_coverage(&mut [], 0, 1).is_err());
    }

    #[test]
    fn chunks_outside_the_request_are_refused() {
        assert_eq!(in_request(100, 10, 100, 20).ok(), Some(0));
        assert!(in_request(99, 10, 100, 20).is_err());
        assert!(in_request(111, 10, 100, 20).is_err());
        assert!(in_request(u64::MAX, 10, 100, 20).is_err());
        assert!(in_request(100, 0, 100, 20).is_err());
    }
}
