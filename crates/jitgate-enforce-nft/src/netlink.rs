//! A small, pure nfnetlink encoder for set-element batches, and a parser for the kernel's
//! acknowledgements. Constants are from the kernel's uapi headers
//! (`linux/netlink.h`, `linux/netfilter/nfnetlink.h`, `linux/netfilter/nf_tables.h`).

use jitgate_enforce::ElemOp;

use crate::elements::{fields_bytes, op_elem};
use crate::TABLE;

// linux/netlink.h
pub(crate) const NLMSG_HDRLEN: usize = 16;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
/// In an error message: the original message's payload was left out.
pub(crate) const NLM_F_CAPPED: u16 = 0x100;
/// In an error message: extended-ack attributes follow.
pub(crate) const NLM_F_ACK_TLVS: u16 = 0x200;
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
pub(crate) const NLA_TYPE_MASK: u16 = 0x3fff;
pub(crate) const NLMSGERR_ATTR_MSG: u16 = 1;
pub(crate) const NLMSGERR_ATTR_OFFS: u16 = 2;

// linux/netfilter/nfnetlink.h
pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(crate) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(crate) const NFNL_MSG_BATCH_END: u16 = 0x11;
/// `NFPROTO_INET`, the family of `table inet …`.
pub(crate) const NFPROTO_INET: u8 = 1;
const AF_UNSPEC: u8 = 0;

// linux/netfilter/nf_tables.h
pub(crate) const NFT_MSG_DELTABLE: u16 = 2;
pub(crate) const NFT_MSG_NEWSETELEM: u16 = 12;
pub(crate) const NFT_MSG_DESTROYSETELEM: u16 = 30;
pub(crate) const NFTA_TABLE_NAME: u16 = 1;
pub(crate) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(crate) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(crate) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(crate) const NFTA_LIST_ELEM: u16 = 1;
pub(crate) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(crate) const NFTA_SET_ELEM_DATA: u16 = 2;
pub(crate) const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
pub(crate) const NFTA_DATA_VALUE: u16 = 1;

/// A nested attribute's length is a u16; a message's element list is cut well below that.
const MAX_ELEMENTS_BYTES: usize = 60_000;

/// Appends netlink messages and attributes to a buffer (native-endian headers, 4-byte
/// alignment).
#[derive(Default)]
pub(crate) struct Writer {
    pub buf: Vec<u8>,
}

pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Writer {
    fn pad(&mut self) {
        self.buf.resize(align4(self.buf.len()), 0);
    }

    /// Starts a message with its `nfgenmsg` header; returns where it starts.
    pub(crate) fn begin_msg(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by end_msg
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills it in
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    pub(crate) fn end_msg(&mut self, start: usize) {
        self.pad();
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    pub(crate) fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// A NUL-terminated string attribute.
    pub(crate) fn attr_str(&mut self, ty: u16, s: &str) {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.attr(ty, &data);
    }

    pub(crate) fn begin_nest(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    pub(crate) fn end_nest(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

/// What one message of a batch carries, to name the operation the kernel refuses.
#[derive(Debug, Clone)]
pub(crate) struct MsgInfo {
    pub seq: u32,
    /// e.g. "add 3 elements to set allow4".
    pub what: String,
    /// (offset of the element's attribute from the start of the message, index into ops).
    pub elems: Vec<(usize, usize)>,
}

/// An encoded batch and what its sequence numbers stand for.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    pub bytes: Vec<u8>,
    pub begin_seq: u32,
    pub messages: Vec<MsgInfo>,
    /// The first sequence number after this batch.
    pub next_seq: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Add,
    Del,
}

/// One nfnetlink batch for `ops`: `BATCH_BEGIN`, the element messages, `BATCH_END`; sequence
/// numbers count up from `seq`. The kernel applies the batch as one transaction.
///
/// Consecutive operations of one kind (adds, or deletes) are grouped into one message per set
/// (in order of first appearance; a message is split when its element list nears 64 KiB);
/// the order between a run of deletes and the adds after it is kept, so "delete then add the
/// same key" renews an element. Adds are `NEWSETELEM` with `NLM_F_CREATE` (an existing element
/// gets the new timeout), deletes are `DESTROYSETELEM` (Linux ≥ 6.3: deleting an element that
/// has already expired is not an error). Every element message asks for an ACK.
///
/// Operations the backend cannot express (gateway entries that mix IPv4 and IPv6) are left out;
/// [`crate::NftFirewall::apply`] refuses them before encoding.
pub fn encode_batch(ops: &[ElemOp], seq: u32) -> Vec<u8> {
    encode(ops, seq).bytes
}

pub(crate) fn encode(ops: &[ElemOp], seq: u32) -> Batch {
    let mut w = Writer::default();
    let begin_seq = seq;
    let mut next = seq;
    let begin = w.begin_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, next, AF_UNSPEC, NFNL_SUBSYS_NFTABLES);
    w.end_msg(begin);
    next = next.wrapping_add(1);

    let mut messages = Vec::new();
    let mut i = 0;
    while i < ops.len() {
        // One run of operations of the same kind.
        let kind = kind_of(&ops[i]);
        let mut j = i;
        while j < ops.len() && kind_of(&ops[j]) == kind {
            j += 1;
        }
        // Group the run by set, in order of first appearance.
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (idx, op) in ops.iter().enumerate().take(j).skip(i) {
            let Ok(elem) = op_elem(op) else { continue };
            match groups.iter_mut().find(|(s, _)| *s == elem.set) {
                Some((_, v)) => v.push(idx),
                None => groups.push((elem.set, vec![idx])),
            }
        }
        for (set, idxs) in groups {
            let mut pending = &idxs[..];
            while !pending.is_empty() {
                let (msg, used) = element_message(&mut w, next, kind, &set, ops, pending);
                messages.push(msg);
                pending = &pending[used..];
                next = next.wrapping_add(1);
            }
        }
        i = j;
    }

    let end = w.begin_msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, next, AF_UNSPEC, NFNL_SUBSYS_NFTABLES);
    w.end_msg(end);
    next = next.wrapping_add(1);
    Batch { bytes: w.buf, begin_seq, messages, next_seq: next }
}

fn kind_of(op: &ElemOp) -> Kind {
    match op {
        ElemOp::AddGrant { .. } | ElemOp::AddDnat { .. } => Kind::Add,
        ElemOp::DelGrant { .. } | ElemOp::DelDnat { .. } => Kind::Del,
    }
}

/// Writes one NEWSETELEM/DESTROYSETELEM message with as many of `idxs` as fit; returns its
/// description and how many it took (at least one).
fn element_message(
    w: &mut Writer,
    seq: u32,
    kind: Kind,
    set: &str,
    ops: &[ElemOp],
    idxs: &[usize],
) -> (MsgInfo, usize) {
    let (ty, flags, verb) = match kind {
        Kind::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK, "add"),
        Kind::Del => (NFT_MSG_DESTROYSETELEM, NLM_F_REQUEST | NLM_F_ACK, "delete"),
    };
    let start = w.begin_msg((NFNL_SUBSYS_NFTABLES << 8) | ty, flags, seq, NFPROTO_INET, 0);
    w.attr_str(NFTA_SET_ELEM_LIST_TABLE, TABLE);
    w.attr_str(NFTA_SET_ELEM_LIST_SET, set);
    let list = w.begin_nest(NFTA_SET_ELEM_LIST_ELEMENTS);
    let mut elems = Vec::new();
    let mut used = 0;
    for &idx in idxs {
        if used > 0 && w.buf.len() - list > MAX_ELEMENTS_BYTES {
            break;
        }
        used += 1;
        let op = &ops[idx];
        let Ok(elem) = op_elem(op) else { continue };
        elems.push((w.buf.len() - start, idx));
        let e = w.begin_nest(NFTA_LIST_ELEM);
        let key = w.begin_nest(NFTA_SET_ELEM_KEY);
        w.attr(NFTA_DATA_VALUE, &fields_bytes(&elem.key));
        w.end_nest(key);
        if let (Kind::Add, Some(data)) = (kind, &elem.data) {
            let d = w.begin_nest(NFTA_SET_ELEM_DATA);
            w.attr(NFTA_DATA_VALUE, &fields_bytes(data));
            w.end_nest(d);
        }
        if let ElemOp::AddGrant { timeout, .. } | ElemOp::AddDnat { timeout, .. } = op {
            // Never 0: in a set with timeouts and no default, 0 means "never expires". Not cut
            // to `MAX_TIMEOUT`: the kernel refuses 2^64 ns and more (ERANGE), the batch fails
            // whole and the agent replaces the table, whose script cuts it.
            let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1);
            w.attr(NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
        }
        w.end_nest(e);
    }
    w.end_nest(list);
    w.end_msg(start);
    let n = elems.len();
    let what = format!(
        "{verb} {n} element{} {} {} {set}",
        if n == 1 { "" } else { "s" },
        if kind == Kind::Add { "to" } else { "from" },
        if set.starts_with("dnat") { "map" } else { "set" }
    );
    (MsgInfo { seq, what, elems }, used)
}

/// A batch that deletes our table: `DELTABLE` (the caller treats `ENOENT` as done).
pub(crate) fn encode_delete_table(seq: u32) -> Batch {
    let mut w = Writer::default();
    let b = w.begin_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, AF_UNSPEC, NFNL_SUBSYS_NFTABLES);
    w.end_msg(b);
    let m = w.begin_msg(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq.wrapping_add(1),
        NFPROTO_INET,
        0,
    );
    w.attr_str(NFTA_TABLE_NAME, TABLE);
    w.end_msg(m);
    let e = w.begin_msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq.wrapping_add(2), AF_UNSPEC, NFNL_SUBSYS_NFTABLES);
    w.end_msg(e);
    let what = format!("delete table inet {TABLE}");
    Batch {
        bytes: w.buf,
        begin_seq: seq,
        messages: vec![MsgInfo { seq: seq.wrapping_add(1), what, elems: vec![] }],
        next_seq: seq.wrapping_add(3),
    }
}

/// A harmless probe: destroy an element of a set in a table that does not exist. Kernels with
/// `NFT_MSG_DESTROYSETELEM` answer 0 or `ENOENT`; older ones refuse the message type.
pub(crate) fn encode_probe(seq: u32) -> Batch {
    let mut w = Writer::default();
    let b = w.begin_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, AF_UNSPEC, NFNL_SUBSYS_NFTABLES);
    w.end_msg(b);
    let m = w.begin_msg(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DESTROYSETELEM,
        NLM_F_REQUEST | NLM_F_ACK,
        seq.wrapping_add(1),
        NFPROTO_INET,
        0,
    );
    w.attr_str(NFTA_SET_ELEM_LIST_TABLE, "jitgate-probe-absent");
    w.attr_str(NFTA_SET_ELEM_LIST_SET, "absent");
    let list = w.begin_nest(NFTA_SET_ELEM_LIST_ELEMENTS);
    let e = w.begin_nest(NFTA_LIST_ELEM);
    let k = w.begin_nest(NFTA_SET_ELEM_KEY);
    w.attr(NFTA_DATA_VALUE, &[0; 4]);
    w.end_nest(k);
    w.end_nest(e);
    w.end_nest(list);
    w.end_msg(m);
    let e = w.begin_msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq.wrapping_add(2), AF_UNSPEC, NFNL_SUBSYS_NFTABLES);
    w.end_msg(e);
    let what = "a probe DESTROYSETELEM".to_string();
    Batch {
        bytes: w.buf,
        begin_seq: seq,
        messages: vec![MsgInfo { seq: seq.wrapping_add(1), what, elems: vec![] }],
        next_seq: seq.wrapping_add(3),
    }
}

/// One acknowledgement (an `NLMSG_ERROR` message; error 0 means success).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ack {
    pub seq: u32,
    /// A positive errno, or 0.
    pub errno: i32,
    /// `NLMSGERR_ATTR_MSG`.
    pub message: Option<String>,
    /// `NLMSGERR_ATTR_OFFS`: where in the original message the offending attribute starts.
    pub offset: Option<u32>,
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// One netlink message of a datagram: its type, flags, sequence number and the whole message
/// (header included).
pub(crate) struct Message<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub bytes: &'a [u8],
}

/// The messages of one datagram, in order; a length that does not fit ends it with an error.
pub(crate) fn messages(buf: &[u8]) -> Result<Vec<Message<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, at).unwrap_or(0) as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return Err(format!("malformed netlink message (length {len} at offset {at} of {})", buf.len()));
        }
        out.push(Message {
            ty: u16_at(buf, at + 4).unwrap_or(0),
            flags: u16_at(buf, at + 6).unwrap_or(0),
            seq: u32_at(buf, at + 8).unwrap_or(0),
            bytes: &buf[at..at + len],
        });
        at += align4(len);
    }
    Ok(out)
}

/// Parses the acknowledgements in one datagram from the kernel; other message types are
/// skipped.
pub(crate) fn parse_acks(buf: &[u8]) -> Result<Vec<Ack>, String> {
    let mut acks = Vec::new();
    for Message { ty, flags, seq, bytes: msg } in messages(buf)? {
        if ty == NLMSG_ERROR {
            let err = i32::from_ne_bytes(
                msg.get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)
                    .ok_or("truncated error message")?
                    .try_into()
                    .map_err(|_| "bad error")?,
            );
            // The original header follows; its payload too unless capped.
            let orig = NLMSG_HDRLEN + 4;
            let orig_len = u32_at(msg, orig).ok_or("truncated error message")? as usize;
            let mut tlv = if flags & NLM_F_CAPPED != 0 { orig + NLMSG_HDRLEN } else { orig + align4(orig_len) };
            // The kernel sends a negative errno; any other value is taken as it comes, without
            // overflowing on `i32::MIN`.
            let mut ack = Ack { seq, errno: err.saturating_neg(), message: None, offset: None };
            if flags & NLM_F_ACK_TLVS != 0 {
                while tlv + 4 <= msg.len() {
                    let alen = u16_at(msg, tlv).unwrap_or(0) as usize;
                    let aty = u16_at(msg, tlv + 2).unwrap_or(0) & NLA_TYPE_MASK;
                    if alen < 4 || tlv + alen > msg.len() {
                        break;
                    }
                    let data = &msg[tlv + 4..tlv + alen];
                    match aty {
                        NLMSGERR_ATTR_MSG => {
                            let s = data.split(|b| *b == 0).next().unwrap_or(&[]);
                            ack.message = Some(String::from_utf8_lossy(s).into_owned());
                        }
                        NLMSGERR_ATTR_OFFS => ack.offset = u32_at(data, 0),
                        _ => {}
                    }
                    tlv += align4(alen);
                }
            }
            acks.push(ack);
        }
    }
    Ok(acks)
}

impl Batch {
    /// Names what the kernel refused: the operation when the offset points into one of its
    /// elements, else the message, else the batch itself.
    pub(crate) fn describe(&self, ops: &[ElemOp], seq: u32, offset: Option<u32>) -> String {
        let Some(msg) = self.messages.iter().find(|m| m.seq == seq) else {
            return if seq == self.begin_seq {
                "the batch".to_string()
            } else {
                format!("message with sequence number {seq}")
            };
        };
        if let Some(off) = offset {
            let off = off as usize;
            if let Some((_, idx)) = msg.elems.iter().rev().find(|(start, _)| *start <= off) {
                if off >= msg.elems[0].0 {
                    return crate::elements::describe(&ops[*idx]);
                }
            }
        }
        msg.what.clone()
    }
}

#[cfg(test)]
mod tests;
