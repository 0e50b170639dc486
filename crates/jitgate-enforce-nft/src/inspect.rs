//! Reading nftables back, for `jitgate doctor`: the tables the kernel holds, and the sets of
//! `table inet jitgate` with the number of elements in each. Netlink dumps (`GETTABLE`,
//! `GETSET`, `GETSETELEM` with `NLM_F_DUMP`), encoded and parsed here, pure and byte-tested; the
//! socket calls are [`crate::NftFirewall::tables`] and [`crate::NftFirewall::inspect`].

use crate::netlink::{
    align4, messages, u16_at, u32_at, Message, Writer, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFTA_LIST_ELEM,
    NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE, NLA_TYPE_MASK, NLMSG_ERROR,
    NLMSG_HDRLEN, NLM_F_REQUEST,
};
use crate::{
    MAP_DNAT4, MAP_DNAT4_NET, MAP_DNAT6, MAP_DNAT6_NET, SET_CUT, SET_GW_CUT, SET_GW_CUT6, SET_GW_PROTECTED,
    SET_GW_PROTECTED6, SET_PROTECTED, TABLE,
};

// linux/netlink.h
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLMSG_DONE: u16 = 3;
// linux/netfilter/nf_tables.h
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFPROTO_UNSPEC: u8 = 0;
/// The size of `struct nfgenmsg`, after the netlink header.
const NFGENMSG_LEN: usize = 4;

/// A table the kernel holds: its family (`NFPROTO_*`) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub family: u8,
    pub name: String,
}

impl TableName {
    /// `inet jitgate`, `ip filter` …
    pub fn describe(&self) -> String {
        let family = match self.family {
            1 => "inet",
            2 => "ip",
            3 => "arp",
            5 => "netdev",
            7 => "bridge",
            10 => "ip6",
            _ => "?",
        };
        format!("{family} {}", self.name)
    }
}

/// What `table inet jitgate` holds: every set (and map) with its element count, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableContents {
    pub sets: Vec<(String, usize)>,
}

impl TableContents {
    /// Every element of every set.
    pub fn elements(&self) -> usize {
        self.sets.iter().map(|(_, n)| n).sum()
    }

    /// Elements of the sets that say which ports are protected (`protected`, `cut`,
    /// `gw_protected`, `gw_cut`, `gw_protected6`, `gw_cut6`).
    pub fn protected(&self) -> usize {
        self.count(|s| {
            [SET_PROTECTED, SET_CUT, SET_GW_PROTECTED, SET_GW_CUT, SET_GW_PROTECTED6, SET_GW_CUT6].contains(&s)
        })
    }

    /// Elements of the DNAT maps (`dnat4`, `dnat6`, and their per-prefix-length maps).
    pub fn dnat(&self) -> usize {
        self.count(|s| {
            [MAP_DNAT4, MAP_DNAT6].contains(&s) || s.starts_with(MAP_DNAT4_NET) || s.starts_with(MAP_DNAT6_NET)
        })
    }

    /// Elements of the grant sets (everything else: `allow4`, `allow6net_24`, `gw_allow4` …).
    pub fn grants(&self) -> usize {
        self.elements() - self.protected() - self.dnat()
    }

    fn count(&self, f: impl Fn(&str) -> bool) -> usize {
        self.sets.iter().filter(|(s, _)| f(s)).map(|(_, n)| n).sum()
    }
}

/// One dump request: `GETTABLE` of every family.
pub(crate) fn encode_get_tables(seq: u32) -> Vec<u8> {
    let mut w = Writer::default();
    let m =
        w.begin_msg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE, NLM_F_REQUEST | NLM_F_DUMP, seq, NFPROTO_UNSPEC, 0);
    w.end_msg(m);
    w.buf
}

/// `GETSET` of our table's sets (the kernel answers `ENOENT` when the table does not exist).
pub(crate) fn encode_get_sets(seq: u32) -> Vec<u8> {
    let mut w = Writer::default();
    let m = w.begin_msg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSET, NLM_F_REQUEST | NLM_F_DUMP, seq, NFPROTO_INET, 0);
    w.attr_str(NFTA_SET_TABLE, TABLE);
    w.end_msg(m);
    w.buf
}

/// `GETSETELEM` of one set of our table.
pub(crate) fn encode_get_elements(seq: u32, set: &str) -> Vec<u8> {
    let mut w = Writer::default();
    let m =
        w.begin_msg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM, NLM_F_REQUEST | NLM_F_DUMP, seq, NFPROTO_INET, 0);
    w.attr_str(NFTA_SET_ELEM_LIST_TABLE, TABLE);
    w.attr_str(NFTA_SET_ELEM_LIST_SET, set);
    w.end_msg(m);
    w.buf
}

/// One message of a dump's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// An object: the nftables message type (without the subsystem), the `nfgenmsg` family,
    /// and its attributes' bytes.
    Object { ty: u16, family: u8, attrs: Vec<u8> },
    /// The end of the dump.
    Done,
    /// The kernel refused the request (a positive errno).
    Error(i32),
}

/// The messages of one datagram that answer the request numbered `seq` (others are late
/// answers to something else, and skipped).
pub(crate) fn parse_replies(buf: &[u8], seq: u32) -> Result<Vec<Reply>, String> {
    let mut out = Vec::new();
    for Message { ty, seq: msg_seq, bytes: msg, .. } in messages(buf)? {
        if msg_seq != seq {
            continue;
        }
        match ty {
            NLMSG_DONE => out.push(Reply::Done),
            NLMSG_ERROR => {
                let err = u32_at(msg, NLMSG_HDRLEN).ok_or("truncated error message")? as i32;
                // An error of 0 is an acknowledgement, not an answer of a dump.
                if err != 0 {
                    out.push(Reply::Error(err.saturating_neg()));
                }
            }
            _ if ty >> 8 == NFNL_SUBSYS_NFTABLES => {
                let family = *msg.get(NLMSG_HDRLEN).ok_or("truncated nftables message")?;
                let attrs = msg.get(NLMSG_HDRLEN + NFGENMSG_LEN..).unwrap_or(&[]).to_vec();
                out.push(Reply::Object { ty: ty & 0xff, family, attrs });
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The attributes in `attrs`: (type without flags, payload).
fn attributes(attrs: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= attrs.len() {
        let len = u16_at(attrs, at).unwrap_or(0) as usize;
        let ty = u16_at(attrs, at + 2).unwrap_or(0) & NLA_TYPE_MASK;
        if len < 4 || at + len > attrs.len() {
            break;
        }
        out.push((ty, &attrs[at + 4..at + len]));
        at += align4(len);
    }
    out
}

fn string(payload: &[u8]) -> String {
    let s = payload.split(|b| *b == 0).next().unwrap_or(&[]);
    String::from_utf8_lossy(s).into_owned()
}

/// The table a `NEWTABLE` object names.
pub(crate) fn table_of(reply: &Reply) -> Option<TableName> {
    match reply {
        Reply::Object { ty: NFT_MSG_NEWTABLE, family, attrs } => attributes(attrs)
            .into_iter()
            .find(|(t, _)| *t == NFTA_TABLE_NAME)
            .map(|(_, p)| TableName { family: *family, name: string(p) }),
        _ => None,
    }
}

/// The set a `NEWSET` object names.
pub(crate) fn set_of(reply: &Reply) -> Option<String> {
    match reply {
        Reply::Object { ty: NFT_MSG_NEWSET, attrs, .. } => {
            attributes(attrs).into_iter().find(|(t, _)| *t == NFTA_SET_NAME).map(|(_, p)| string(p))
        }
        _ => None,
    }
}

/// How many elements a `NEWSETELEM` object lists.
pub(crate) fn elements_in(reply: &Reply) -> usize {
    match reply {
        Reply::Object { ty: NFT_MSG_NEWSETELEM, attrs, .. } => attributes(attrs)
            .into_iter()
            .filter(|(t, _)| *t == NFTA_SET_ELEM_LIST_ELEMENTS)
            .map(|(_, list)| attributes(list).iter().filter(|(t, _)| *t == NFTA_LIST_ELEM).count())
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::NLA_F_NESTED;

    fn header(bytes: &[u8]) -> (u32, u16, u16, u32) {
        (u32_at(bytes, 0).unwrap(), u16_at(bytes, 4).unwrap(), u16_at(bytes, 6).unwrap(), u32_at(bytes, 8).unwrap())
    }

    #[test]
    fn dump_requests_are_one_message_each_with_the_dump_flags() {
        let t = encode_get_tables(7);
        assert_eq!(header(&t), (20, (10 << 8) | 1, 0x301, 7));
        assert_eq!(t[16], 0, "every family");

        let s = encode_get_sets(8);
        assert_eq!(header(&s).1, (10 << 8) | 10);
        assert_eq!(s[16], 1, "inet");
        // NFTA_SET_TABLE "jitgate\0": length 12, type 1.
        assert_eq!(&s[20..32], &[12, 0, 1, 0, b'j', b'i', b't', b'g', b'a', b't', b'e', 0]);
        assert_eq!(header(&s).0 as usize, s.len());

        let e = encode_get_elements(9, "allow4");
        assert_eq!(header(&e), (e.len() as u32, (10 << 8) | 13, 0x301, 9));
        assert_eq!(&e[32..44], &[11, 0, 2, 0, b'a', b'l', b'l', b'o', b'w', b'4', 0, 0]);
    }

    /// A message as the kernel sends it: header, nfgenmsg, attributes.
    fn message(ty: u16, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
        let mut w = Writer::default();
        let m = w.begin_msg(ty, 0x2, seq, family, 0);
        w.buf.extend_from_slice(attrs);
        w.end_msg(m);
        w.buf
    }

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut w = Writer::default();
        w.attr(ty, payload);
        w.buf
    }

    #[test]
    fn a_dump_answer_names_tables_and_sets_and_counts_elements() {
        let mut dgram = message((10 << 8) | NFT_MSG_NEWTABLE, 5, 1, &attr(1, b"jitgate\0"));
        dgram.extend(message((10 << 8) | NFT_MSG_NEWTABLE, 5, 2, &attr(1, b"filter\0")));
        dgram.extend(message((10 << 8) | NFT_MSG_NEWTABLE, 4, 2, &attr(1, b"late\0"))); // another request's
        let mut done = Vec::new();
        done.extend_from_slice(&20u32.to_ne_bytes());
        done.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        done.extend_from_slice(&2u16.to_ne_bytes());
        done.extend_from_slice(&5u32.to_ne_bytes());
        done.extend_from_slice(&[0; 8]);
        dgram.extend(&done);
        let replies = parse_replies(&dgram, 5).unwrap();
        assert_eq!(replies.len(), 3);
        let tables: Vec<String> = replies.iter().filter_map(table_of).map(|t| t.describe()).collect();
        assert_eq!(tables, ["inet jitgate", "ip filter"]);
        assert_eq!(replies[2], Reply::Done);

        let set = message((10 << 8) | 9, 6, 1, &[attr(1, b"jitgate\0"), attr(2, b"allow4net_24\0")].concat());
        assert_eq!(parse_replies(&set, 6).unwrap().iter().find_map(set_of).as_deref(), Some("allow4net_24"));

        // Three elements in the list (nested, with the nested flag as the kernel sets it).
        let elem = attr(NFTA_LIST_ELEM | NLA_F_NESTED, &attr(1 | NLA_F_NESTED, &attr(1, &[10, 0, 0, 1])));
        let list = attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &elem.repeat(3));
        let msg = message((10 << 8) | 12, 7, 1, &[attr(1, b"jitgate\0"), attr(2, b"allow4\0"), list].concat());
        let replies = parse_replies(&msg, 7).unwrap();
        assert_eq!(replies.iter().map(elements_in).sum::<usize>(), 3);
    }

    #[test]
    fn an_error_answer_carries_its_errno_and_an_ack_is_no_answer() {
        let error = |errno: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&36u32.to_ne_bytes());
            m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m.extend_from_slice(&0x100u16.to_ne_bytes());
            m.extend_from_slice(&3u32.to_ne_bytes());
            m.extend_from_slice(&[0; 4]);
            m.extend_from_slice(&(-errno).to_ne_bytes());
            m.extend_from_slice(&[0; 16]);
            m
        };
        assert_eq!(parse_replies(&error(2), 3).unwrap(), [Reply::Error(2)]);
        assert_eq!(parse_replies(&error(0), 3).unwrap(), []);
        assert!(parse_replies(&[1, 0, 0, 0, 0, 0], 3).unwrap().is_empty(), "shorter than a header: nothing");
        assert!(parse_replies(&[200, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0], 3).is_err());
    }

    #[test]
    fn contents_are_counted_by_kind() {
        let c = TableContents {
            sets: vec![
                ("protected".into(), 2),
                ("cut".into(), 1),
                ("allow4".into(), 3),
                ("allow4net_24".into(), 1),
                ("gw_protected".into(), 4),
                ("gw_allow4".into(), 5),
                ("dnat4".into(), 6),
                ("dnat4net_16".into(), 1),
                ("gw_protected6".into(), 2),
                ("gw_cut6".into(), 1),
                ("gw_allow6net_64".into(), 3),
                ("dnat6".into(), 2),
                ("dnat6net_64".into(), 1),
            ],
        };
        assert_eq!((c.elements(), c.protected(), c.grants(), c.dnat()), (32, 10, 12, 10));
    }
}
