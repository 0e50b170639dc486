//! Reading our own netlink bytes back: a strict decoder of what [`crate::encode_batch`] writes,
//! and the parsers of the kernel's answers run over any datagram. Pure; for the round-trip tests
//! and the fuzz targets (`decode_batch(encode_batch(ops))` gives `ops` back, normalised as the
//! kernel keeps them: a range's network address, whole milliseconds, deletes before the adds
//! that follow them, each run of one kind grouped by set).
//!
//! The decoder reads every set's key (and a map's value) by the type the set has in the table
//! ([`crate::ruleset`]), not by what the encoder meant, and refuses anything the kernel would
//! read differently: a key of the wrong length, padding that is not zero, a range key with host
//! bits (the lookup masks the packet's source, so such an element never matches), a set the
//! table does not have, a length that does not add up.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;
use jitgate_enforce::{DnatKey, DnatTarget, ElemOp, GrantKey, L4};

use crate::inspect::{elements_in, parse_replies, set_of, table_of, Reply};
use crate::netlink::{
    align4, messages, parse_acks, u16_at, Message, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES,
    NFPROTO_INET, NFTA_DATA_VALUE, NFTA_LIST_ELEM, NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_LIST_ELEMENTS,
    NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_TIMEOUT, NFT_MSG_DESTROYSETELEM,
    NFT_MSG_NEWSETELEM, NLA_F_NESTED, NLMSG_HDRLEN, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST,
};
use crate::{
    TableName, MAP_DNAT4, MAP_DNAT4_NET, MAP_DNAT6, MAP_DNAT6_NET, SET_ALLOW4, SET_ALLOW4_NET, SET_ALLOW6,
    SET_ALLOW6_NET, SET_GW_ALLOW4, SET_GW_ALLOW4_NET, SET_GW_ALLOW6, SET_GW_ALLOW6_NET, TABLE,
};

/// One batch read back: the sequence numbers of its `BATCH_BEGIN` and `BATCH_END`, how many
/// element messages it holds, and their operations in the order the kernel applies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedBatch {
    pub begin_seq: u32,
    pub end_seq: u32,
    pub messages: usize,
    pub ops: Vec<ElemOp>,
}

/// The layout of a set the element batches write to, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SetType {
    v4: bool,
    /// The prefix length of the source (the full length for the exact sets).
    prefix: u8,
    /// Gateway grants: the VM's address follows the source.
    dest: bool,
    /// DNAT maps: `addr . port` values.
    map: bool,
}

fn set_type(name: &str) -> Option<SetType> {
    let table = [
        (SET_ALLOW4, SET_ALLOW4_NET, true, false, false),
        (SET_ALLOW6, SET_ALLOW6_NET, false, false, false),
        (SET_GW_ALLOW4, SET_GW_ALLOW4_NET, true, true, false),
        (SET_GW_ALLOW6, SET_GW_ALLOW6_NET, false, true, false),
        (MAP_DNAT4, MAP_DNAT4_NET, true, false, true),
        (MAP_DNAT6, MAP_DNAT6_NET, false, false, true),
    ];
    for (exact, net, v4, dest, map) in table {
        let max = if v4 { 32 } else { 128 };
        if name == exact {
            return Some(SetType { v4, prefix: max, dest, map });
        }
        if let Some(len) = name.strip_prefix(net) {
            // The table has one set per prefix length below the full one, named without zeros
            // in front (`allow4net_8`, never `allow4net_08`).
            let prefix = len.parse::<u8>().ok().filter(|p| *p < max && p.to_string() == len)?;
            return Some(SetType { v4, prefix, dest, map });
        }
    }
    None
}

/// A netlink attribute: its type with the flags, and its payload.
struct Attr<'a> {
    ty: u16,
    payload: &'a [u8],
}

/// Every attribute of `bytes`, which they must fill exactly (each padded to 4 bytes with zeros).
fn attrs(bytes: &[u8]) -> Result<Vec<Attr<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u16_at(bytes, at).ok_or_else(|| format!("a truncated attribute header at {at}"))? as usize;
        let ty = u16_at(bytes, at + 2).ok_or_else(|| format!("a truncated attribute header at {at}"))?;
        if len < 4 || at + len > bytes.len() {
            return Err(format!("an attribute of length {len} at {at} of {}", bytes.len()));
        }
        if align4(len) > bytes.len() - at {
            return Err(format!("the attribute at {at} is not padded to 4 bytes"));
        }
        if bytes[at + len..at + align4(len)].iter().any(|b| *b != 0) {
            return Err(format!("padding that is not zero after the attribute at {at}"));
        }
        out.push(Attr { ty, payload: &bytes[at + 4..at + len] });
        at += align4(len);
    }
    Ok(out)
}

/// The one attribute of type `ty` (exactly, flags included) in `list`.
fn one<'a>(list: &[Attr<'a>], ty: u16, what: &str) -> Result<&'a [u8], String> {
    let mut found = list.iter().filter(|a| a.ty == ty);
    match (found.next(), found.next()) {
        (Some(a), None) => Ok(a.payload),
        (None, _) => Err(format!("no {what} attribute")),
        (Some(_), Some(_)) => Err(format!("{what} given twice")),
    }
}

fn optional<'a>(list: &[Attr<'a>], ty: u16, what: &str) -> Result<Option<&'a [u8]>, String> {
    if list.iter().any(|a| a.ty == ty) {
        one(list, ty, what).map(Some)
    } else {
        Ok(None)
    }
}

/// A NUL-terminated string attribute's text.
fn string(payload: &[u8], what: &str) -> Result<String, String> {
    match payload.split_last() {
        Some((0, text)) if !text.contains(&0) => {
            String::from_utf8(text.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
        }
        _ => Err(format!("{what} is not one NUL-terminated string")),
    }
}

/// The value inside a `KEY` or `DATA` nest: one `NFTA_DATA_VALUE`.
fn value<'a>(nest: &'a [u8], what: &str) -> Result<&'a [u8], String> {
    let list = attrs(nest)?;
    if list.len() != 1 {
        return Err(format!("{what} holds {} attributes, not one value", list.len()));
    }
    one(&list, NFTA_DATA_VALUE, what)
}

/// Reads concatenated fields off the front of `bytes`, each a 32-bit register, value first.
struct Fields<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl Fields<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.bytes.len() < n {
            return Err(format!("the {} is {} bytes short", self.what, n - self.bytes.len()));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn addr(&mut self, v4: bool) -> Result<IpAddr, String> {
        if v4 {
            let b = self.take(4)?;
            Ok(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
        } else {
            let mut o = [0u8; 16];
            o.copy_from_slice(self.take(16)?);
            Ok(IpAddr::V6(Ipv6Addr::from(o)))
        }
    }

    fn proto(&mut self) -> Result<L4, String> {
        let what = self.what;
        match self.take(4)? {
            [6, 0, 0, 0] => Ok(L4::Tcp),
            [17, 0, 0, 0] => Ok(L4::Udp),
            other => Err(format!("the {what} names protocol bytes {other:?}, not TCP or UDP")),
        }
    }

    fn port(&mut self) -> Result<u16, String> {
        let what = self.what;
        match self.take(4)? {
            [hi, lo, 0, 0] => Ok(u16::from_be_bytes([*hi, *lo])),
            other => Err(format!("the {what} has port bytes {other:?} with padding that is not zero")),
        }
    }

    fn end(self) -> Result<(), String> {
        match self.bytes.len() {
            0 => Ok(()),
            n => Err(format!("the {} has {n} bytes too many", self.what)),
        }
    }
}

/// Whether the add or the delete message type.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Add,
    Del,
}

/// One element of a `NEWSETELEM`/`DESTROYSETELEM` message, as the set `ty` reads it.
fn element(kind: Kind, ty: SetType, payload: &[u8]) -> Result<ElemOp, String> {
    let list = attrs(payload)?;
    let known = [NFTA_SET_ELEM_KEY | NLA_F_NESTED, NFTA_SET_ELEM_DATA | NLA_F_NESTED, NFTA_SET_ELEM_TIMEOUT];
    if let Some(a) = list.iter().find(|a| !known.contains(&a.ty)) {
        return Err(format!("an element attribute of type {:#x}", a.ty));
    }
    let mut key = Fields { bytes: value(one(&list, NFTA_SET_ELEM_KEY | NLA_F_NESTED, "key")?, "key")?, what: "key" };
    let addr = key.addr(ty.v4)?;
    let source = IpNet::new(addr, ty.prefix).map_err(|e| e.to_string())?;
    if source.trunc() != source {
        return Err(format!("the key {addr} has host bits after /{}: no packet would match it", ty.prefix));
    }
    let dest = if ty.dest { Some(key.addr(ty.v4)?) } else { None };
    let proto = key.proto()?;
    let port = key.port()?;
    key.end()?;
    let data = optional(&list, NFTA_SET_ELEM_DATA | NLA_F_NESTED, "data")?;
    let timeout = optional(&list, NFTA_SET_ELEM_TIMEOUT, "timeout")?
        .map(|t| {
            let ms = u64::from_be_bytes(t.try_into().map_err(|_| format!("a timeout of {} bytes", t.len()))?);
            if ms == 0 {
                return Err("a timeout of 0, which means never in a set without a default".to_string());
            }
            Ok(Duration::from_millis(ms))
        })
        .transpose()?;
    let target = match (ty.map, data) {
        (true, Some(d)) if kind == Kind::Add => {
            let mut v = Fields { bytes: value(d, "data")?, what: "value" };
            let target = DnatTarget { addr: v.addr(ty.v4)?, port: v.port()? };
            v.end()?;
            Some(target)
        }
        (true, None) if kind == Kind::Add => return Err("an added map element without its value".into()),
        (_, Some(_)) => return Err("a value where the set has none or the message deletes".into()),
        (_, None) => None,
    };
    let op = match (kind, target, timeout) {
        (Kind::Add, None, Some(timeout)) => ElemOp::AddGrant { key: GrantKey { source, dest, proto, port }, timeout },
        (Kind::Add, Some(target), Some(timeout)) => {
            ElemOp::AddDnat { key: DnatKey { source, proto, public_port: port }, target, timeout }
        }
        (Kind::Add, _, None) => return Err("an added element without a timeout".into()),
        (Kind::Del, _, Some(_)) => return Err("a deleted element with a timeout".into()),
        (Kind::Del, _, None) if ty.map => ElemOp::DelDnat { key: DnatKey { source, proto, public_port: port } },
        (Kind::Del, _, None) => ElemOp::DelGrant { key: GrantKey { source, dest, proto, port } },
    };
    Ok(op)
}

/// The `nfgenmsg` of a message: family, version, resource id (big-endian).
fn nfgen(m: &Message<'_>) -> Result<(u8, u8, u16), String> {
    match m.bytes.get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4) {
        Some([family, version, hi, lo]) => Ok((*family, *version, u16::from_be_bytes([*hi, *lo]))),
        _ => Err(format!("message {} has no nfgenmsg header", m.seq)),
    }
}

/// A `BATCH_BEGIN` or `BATCH_END`: nothing but the headers, addressed to nftables.
fn batch_marker(m: &Message<'_>, ty: u16, what: &str) -> Result<(), String> {
    if m.ty != ty || m.flags != NLM_F_REQUEST || m.bytes.len() != NLMSG_HDRLEN + 4 {
        return Err(format!("{what} is not a bare batch message (type {:#x}, flags {:#x})", m.ty, m.flags));
    }
    if nfgen(m)? != (0, 0, NFNL_SUBSYS_NFTABLES) {
        return Err(format!("{what} is not addressed to the nftables subsystem"));
    }
    Ok(())
}

/// Reads a batch back: `BATCH_BEGIN`, element messages, `BATCH_END`, with consecutive sequence
/// numbers, every length exact, every element keyed as its set's type reads it.
pub fn decode_batch(bytes: &[u8]) -> Result<DecodedBatch, String> {
    let list = messages(bytes)?;
    let used: usize = list.iter().map(|m| align4(m.bytes.len())).sum();
    if used != bytes.len() {
        return Err(format!("{} bytes after the last message", bytes.len().saturating_sub(used)));
    }
    if let Some(m) = list.iter().find(|m| m.bytes.len() % 4 != 0) {
        return Err(format!("message {} has a length that is not a multiple of 4", m.seq));
    }
    let (Some(first), Some(last)) = (list.first(), list.last()) else {
        return Err("no message".into());
    };
    if list.len() < 2 {
        return Err("a batch without its end".into());
    }
    batch_marker(first, NFNL_MSG_BATCH_BEGIN, "the first message")?;
    batch_marker(last, NFNL_MSG_BATCH_END, "the last message")?;
    let mut expected = first.seq;
    for m in &list[1..] {
        expected = expected.wrapping_add(1);
        if m.seq != expected {
            return Err(format!("sequence number {} where {expected} comes next", m.seq));
        }
    }
    let mut ops = Vec::new();
    for m in &list[1..list.len() - 1] {
        ops.extend(element_message(m)?);
    }
    Ok(DecodedBatch { begin_seq: first.seq, end_seq: last.seq, messages: list.len() - 2, ops })
}

fn element_message(m: &Message<'_>) -> Result<Vec<ElemOp>, String> {
    let seq = m.seq;
    let kind = match (m.ty, m.flags) {
        (t, f)
            if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM
                && f == NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK =>
        {
            Kind::Add
        }
        (t, f) if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DESTROYSETELEM && f == NLM_F_REQUEST | NLM_F_ACK => {
            Kind::Del
        }
        (t, f) => return Err(format!("message {seq} has type {t:#x} with flags {f:#x}")),
    };
    if nfgen(m)? != (NFPROTO_INET, 0, 0) {
        return Err(format!("message {seq} is not for the inet family"));
    }
    let top = attrs(&m.bytes[NLMSG_HDRLEN + 4..])?;
    if top.len() != 3 {
        return Err(format!("message {seq} has {} attributes: table, set and elements expected", top.len()));
    }
    let table = string(one(&top, NFTA_SET_ELEM_LIST_TABLE, "table")?, "the table")?;
    if table != TABLE {
        return Err(format!("message {seq} changes table '{table}'"));
    }
    let set = string(one(&top, NFTA_SET_ELEM_LIST_SET, "set")?, "the set")?;
    let ty = set_type(&set).ok_or_else(|| format!("message {seq} names set '{set}', which the table has not"))?;
    let list = attrs(one(&top, NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, "element list")?)?;
    if list.is_empty() {
        return Err(format!("message {seq} lists no element"));
    }
    let mut ops = Vec::with_capacity(list.len());
    for a in list {
        if a.ty != NFTA_LIST_ELEM | NLA_F_NESTED {
            return Err(format!("message {seq}: a list attribute of type {:#x}", a.ty));
        }
        ops.push(element(kind, ty, a.payload).map_err(|e| format!("message {seq}, set {set}: {e}"))?);
    }
    Ok(ops)
}

/// One acknowledgement as the socket code reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRead {
    pub seq: u32,
    pub errno: i32,
    pub message: Option<String>,
    pub offset: Option<u32>,
}

/// What the socket code makes of one datagram from the kernel: the acknowledgements of a batch,
/// and, as the answer to the dump request numbered `seq`, the tables, sets and elements it lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnswerRead {
    pub acks: Vec<AckRead>,
    pub tables: Vec<TableName>,
    pub sets: Vec<String>,
    pub elements: usize,
    pub errors: Vec<i32>,
    pub done: bool,
}

/// Runs the parsers of [`crate::NftFirewall`] over `datagram` (the acknowledgement parser, and
/// the dump parser for request `seq`); an error is what the firewall would report.
pub fn read_answer(datagram: &[u8], seq: u32) -> Result<AnswerRead, String> {
    let acks = parse_acks(datagram)?
        .into_iter()
        .map(|a| AckRead { seq: a.seq, errno: a.errno, message: a.message, offset: a.offset })
        .collect();
    let replies = parse_replies(datagram, seq)?;
    Ok(AnswerRead {
        acks,
        tables: replies.iter().filter_map(table_of).collect(),
        sets: replies.iter().filter_map(set_of).collect(),
        elements: replies.iter().map(elements_in).sum(),
        errors: replies.iter().filter_map(|r| if let Reply::Error(e) = r { Some(*e) } else { None }).collect(),
        done: replies.contains(&Reply::Done),
    })
}

/// What [`crate::NftFirewall::apply`] names when the kernel refuses message `refused_seq` (at
/// `offset` into it) of the batch it encoded for `ops` from sequence number `seq`.
pub fn describe_refusal(ops: &[ElemOp], seq: u32, refused_seq: u32, offset: Option<u32>) -> String {
    crate::netlink::encode(ops, seq).describe(ops, refused_seq, offset)
}

/// The offset, into its message, of every element `encode_batch(ops, seq)` writes, with the
/// sequence number of that message and the index of the operation in `ops`: what an
/// acknowledgement's offset points at.
pub fn element_offsets(ops: &[ElemOp], seq: u32) -> Vec<(u32, usize, usize)> {
    crate::netlink::encode(ops, seq)
        .messages
        .iter()
        .flat_map(|m| m.elems.iter().map(move |(offset, idx)| (m.seq, *offset, *idx)))
        .collect()
}

#[cfg(test)]
mod tests;
