//! LVM2 physical volumes, read in user space: the label, the metadata
//! area's current text, and each logical volume's segments as byte ranges
//! of the disk.
//!
//! The host's LVM never sees these volumes. Two points of one VM carry the
//! same volume group and PV UUIDs; handed to the host's LVM they would clash
//! with each other (and with the host's own, when it backs up itself).
//! Read here, each is only a list of ranges of its own point's disk.

use std::collections::BTreeMap;

use super::partitions::{ReadAt, SECTOR};
use crate::mount::Extent;

/// A logical volume: `vg/lv` and where its bytes lie on the disk, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogicalVolume {
    pub(crate) vg: String,
    pub(crate) lv: String,
    pub(crate) extents: Vec<Extent>,
}

/// Where the label says the PV's metadata is: (pv uuid, metadata area
/// offsets within the PV), or None when there is no LVM2 label.
fn label(read_at: &mut ReadAt<'_>, pv: Extent) -> Result<Option<(String, Vec<u64>)>, String> {
    let head = read_at(pv.offset, (4 * SECTOR).min(pv.length) as usize)?;
    for s in head.chunks_exact(SECTOR as usize) {
        if &s[..8] != b"LABELONE" || &s[24..32] != b"LVM2 001" {
            continue;
        }
        let at = u32::from_le_bytes([s[20], s[21], s[22], s[23]]) as usize;
        if at + 40 > s.len() {
            return Err(format!("LVM label points its header at byte {at}, outside its sector"));
        }
        let h = &s[at..];
        let uuid = String::from_utf8_lossy(&h[..32]).to_string();
        // Two lists of (offset, size), each ended by a zero pair: data
        // areas, then metadata areas.
        let mut areas = h[40..].chunks_exact(16).map(|c| {
            (
                u64::from_le_bytes(c[..8].try_into().unwrap_or_default()),
                u64::from_le_bytes(c[8..].try_into().unwrap_or_default()),
            )
        });
        areas.by_ref().take_while(|&(o, _)| o != 0).for_each(drop);
        let mdas = areas.take_while(|&(o, _)| o != 0).map(|(o, _)| o).collect();
        return Ok(Some((uuid, mdas)));
    }
    Ok(None)
}

/// The text of the current metadata in the area at `mda` (a byte offset
/// within the PV).
fn metadata_text(read_at: &mut ReadAt<'_>, pv: Extent, mda: u64) -> Result<String, String> {
    let h = read_at(pv.offset + mda, SECTOR as usize)?;
    if &h[4..20] != b" LVM2 x[5A%r0N*>" {
        return Err(format!("no LVM metadata area header at byte {mda} of the PV"));
    }
    let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap_or_default());
    let (start, size) = (u64_at(24), u64_at(32));
    // The first raw location is the current metadata.
    let (offset, len) = (u64_at(40), u64_at(48));
    if start != mda || len == 0 || len > size || offset >= size || len > 64 << 20 {
        return Err(format!("LVM metadata area at byte {mda} names {len} bytes at {offset} of an area of {size}"));
    }
    // The text may wrap to the area's start (after its header sector).
    let first = len.min(size - offset);
    let mut text = read_at(pv.offset + mda + offset, first as usize)?;
    if first < len {
        text.extend(read_at(pv.offset + mda + SECTOR, (len - first) as usize)?);
    }
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    String::from_utf8(text[..end].to_vec()).map_err(|_| "LVM metadata is not text".to_string())
}

/// A value of LVM's metadata text.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Number(i64),
    Text(String),
    List(Vec<Value>),
    Section(BTreeMap<String, Value>),
}

impl Value {
    fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Section(m) => m.get(key),
            _ => None,
        }
    }
    fn number(&self, key: &str) -> Option<i64> {
        match self.get(key) {
            Some(Value::Number(n)) => Some(*n),
            _ => None,
        }
    }
    fn text(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Value::Text(t)) => Some(t),
            _ => None,
        }
    }
    fn sections(&self) -> impl Iterator<Item = (&String, &Value)> {
        match self {
            Value::Section(m) => Some(m.iter().filter(|(_, v)| matches!(v, Value::Section(_)))),
            _ => None,
        }
        .into_iter()
        .flatten()
    }
}

/// Parses LVM's metadata text format (`key = value`, `name { ... }`,
/// `[a, b]`, `# comments`).
fn parse(text: &str) -> Result<Value, String> {
    let mut p = Parser { s: text.as_bytes(), at: 0, depth: 0 };
    let v = p.section(false)?;
    Ok(v)
}

/// How deep sections and lists may nest: LVM writes 4 levels; a guest's
/// metadata nested deeper is refused, never allowed to exhaust the stack.
const MAX_DEPTH: usize = 32;

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn skip(&mut self) {
        while self.at < self.s.len() {
            match self.s[self.at] {
                b' ' | b'\t' | b'\n' | b'\r' => self.at += 1,
                b'#' => {
                    while self.at < self.s.len() && self.s[self.at] != b'\n' {
                        self.at += 1;
                    }
                }
                _ => break,
            }
        }
    }
    fn err(&self, what: &str) -> String {
        format!("LVM metadata: {what} at byte {}", self.at)
    }
    fn word(&mut self) -> Result<String, String> {
        let start = self.at;
        while self.at < self.s.len() && (self.s[self.at].is_ascii_alphanumeric() || b"_.+-".contains(&self.s[self.at]))
        {
            self.at += 1;
        }
        if start == self.at {
            return Err(self.err("a name expected"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.at]).to_string())
    }
    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH { Err(self.err("nested too deeply")) } else { Ok(()) }
    }
    fn section(&mut self, nested: bool) -> Result<Value, String> {
        let mut map = BTreeMap::new();
        loop {
            self.skip();
            if self.at >= self.s.len() {
                return if nested { Err(self.err("'}' expected")) } else { Ok(Value::Section(map)) };
            }
            if self.s[self.at] == b'}' {
                self.at += 1;
                return if nested { Ok(Value::Section(map)) } else { Err(self.err("unexpected '}'")) };
            }
            let key = self.word()?;
            self.skip();
            match self.s.get(self.at) {
                Some(b'{') => {
                    self.at += 1;
                    self.enter()?;
                    map.insert(key, self.section(true)?);
                    self.depth -= 1;
                }
                Some(b'=') => {
                    self.at += 1;
                    self.skip();
                    map.insert(key, self.value()?);
                }
                _ => return Err(self.err("'=' or '{' expected")),
            }
        }
    }
    fn value(&mut self) -> Result<Value, String> {
        match self.s.get(self.at) {
            Some(b'"') => {
                self.at += 1;
                let mut out = Vec::new();
                while let Some(&c) = self.s.get(self.at) {
                    self.at += 1;
                    match c {
                        b'"' => return Ok(Value::Text(String::from_utf8_lossy(&out).to_string())),
                        b'\\' => {
                            if let Some(&n) = self.s.get(self.at) {
                                out.push(n);
                                self.at += 1;
                            }
                        }
                        c => out.push(c),
                    }
                }
                Err(self.err("unterminated string"))
            }
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                loop {
                    self.skip();
                    match self.s.get(self.at) {
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Value::List(items));
                        }
                        Some(b',') => self.at += 1,
                        Some(_) => {
                            self.enter()?;
                            items.push(self.value()?);
                            self.depth -= 1;
                        }
                        None => return Err(self.err("']' expected")),
                    }
                }
            }
            _ => {
                let w = self.word()?;
                w.parse::<i64>()
                    .map(Value::Number)
                    .or_else(|_| w.parse::<f64>().map(|f| Value::Number(f as i64)))
                    .map_err(|_| self.err("a value expected"))
            }
        }
    }
}

/// The logical volumes whose every segment lies on the PV at `pv` (a
/// partition, or the whole disk); empty when `pv` is not an LVM2 PV.
///
/// # Errors
/// Unreadable or inconsistent metadata, and volumes of kinds read here
/// cannot (thin, RAID, striped over several PVs): what and which, in words.
pub(crate) fn logical_volumes(read_at: &mut ReadAt<'_>, pv: Extent) -> Result<Vec<LogicalVolume>, String> {
    let Some((uuid, mdas)) = label(read_at, pv)? else { return Ok(Vec::new()) };
    let Some(&mda) = mdas.first() else {
        return Err(format!("LVM PV {uuid} keeps no metadata on this disk (its volume group spans other disks)"));
    };
    let root = parse(&metadata_text(read_at, pv, mda)?)?;
    let mut out = Vec::new();
    for (vg_name, vg) in root.sections() {
        let too_big = |what: &str| format!("LVM volume group {vg_name}: {what} is out of range");
        let extent_size = (vg.number("extent_size").filter(|&n| n > 0).ok_or("LVM metadata: no extent_size")? as u64)
            .checked_mul(SECTOR)
            .ok_or_else(|| too_big("extent_size"))?;
        // Which of the VG's PVs is this one.
        let Some((pv_key, this)) = vg
            .get("physical_volumes")
            .into_iter()
            .flat_map(Value::sections)
            .find(|(_, p)| p.text("id").map(|id| id.replace('-', "")) == Some(uuid.clone()))
        else {
            return Err(format!("LVM volume group {vg_name}: PV {uuid} is not among its physical volumes"));
        };
        let pe_start = (this.number("pe_start").unwrap_or(0).max(0) as u64)
            .checked_mul(SECTOR)
            .ok_or_else(|| too_big("pe_start"))?;
        for (lv_name, lv) in vg.get("logical_volumes").into_iter().flat_map(Value::sections) {
            let visible =
                matches!(lv.get("status"), Some(Value::List(s)) if s.contains(&Value::Text("VISIBLE".into())));
            if !visible {
                continue;
            }
            let mut segments: Vec<(i64, Extent)> = Vec::new();
            for (seg_name, seg) in lv.sections() {
                let place = format!("LVM volume {vg_name}/{lv_name}, {seg_name}");
                let kind = seg.text("type").unwrap_or("?");
                if kind != "striped" || seg.number("stripe_count") != Some(1) {
                    return Err(format!("{place}: segments of type {kind} (not linear) are not read here"));
                }
                let Some(Value::List(stripes)) = seg.get("stripes") else {
                    return Err(format!("{place}: no stripes"));
                };
                let (Some(Value::Text(on)), Some(Value::Number(first_pe))) = (stripes.first(), stripes.get(1)) else {
                    return Err(format!("{place}: malformed stripes"));
                };
                if on != pv_key {
                    return Err(format!(
                        "{place}: lies on {on}, another PV (volume groups spanning disks are not read here)"
                    ));
                }
                let count = seg.number("extent_count").filter(|&n| n > 0).ok_or(format!("{place}: no extent_count"))?;
                let offset = ((*first_pe).max(0) as u64)
                    .checked_mul(extent_size)
                    .and_then(|o| o.checked_add(pv.offset + pe_start))
                    .ok_or_else(|| too_big(&format!("{lv_name} {seg_name}'s start")))?;
                let length = (count as u64)
                    .checked_mul(extent_size)
                    .ok_or_else(|| too_big(&format!("{lv_name} {seg_name}'s length")))?;
                if offset.checked_add(length).is_none_or(|end| end > pv.offset + pv.length) {
                    return Err(format!("{place}: ends past its PV"));
                }
                segments.push((seg.number("start_extent").unwrap_or(0), Extent { offset, length }));
            }
            segments.sort_by_key(|s| s.0);
            out.push(LogicalVolume {
                vg: vg_name.clone(),
                lv: lv_name.clone(),
                extents: segments.into_iter().map(|s| s.1).collect(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_text_parses_into_sections_lists_and_numbers() {
        let text = r#"vg0 {
id = "abc"
seqno = 3
extent_size = 8192 # 4 MiB
physical_volumes {
pv0 {
id = "AAAA-BBBB"
pe_start = 2048
}
}
logical_volumes {
root {
status = ["READ", "WRITE", "VISIBLE"]
segment1 {
start_extent = 0
extent_count = 2
type = "striped"
stripe_count = 1
stripes = [
"pv0", 5
]
}
}
}
}
contents = "Text Format Volume Group"
"#;
        let v = parse(text).expect("parse");
        let vg = v.get("vg0").expect("vg0");
        assert_eq!(vg.number("extent_size"), Some(8192));
        assert_eq!(vg.get("physical_volumes").and_then(|p| p.get("pv0")).and_then(|p| p.text("id")), Some("AAAA-BBBB"));
        let seg =
            vg.get("logical_volumes").and_then(|l| l.get("root")).and_then(|r| r.get("segment1")).expect("segment");
        assert_eq!(seg.get("stripes"), Some(&Value::List(vec![Value::Text("pv0".into()), Value::Number(5)])));
        assert_eq!(v.sections().count(), 1);
        assert!(parse("vg {").is_err());
        // A guest's hostile metadata: nesting past any real depth, huge numbers.
        assert!(parse(&"a { ".repeat(100_000)).is_err());
        assert!(parse(&format!("a = {}", "[".repeat(100_000))).is_err());
        assert!(parse("x = 99999999999999999999999").is_ok());
        assert!(parse("a = ").is_err());
    }
}
