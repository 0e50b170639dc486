//! Byte-level tests of the encoder against hand-written attribute trees (built by a separate,
//! deliberately naive serializer below) and against literal bytes taken from
//! `nft --debug=mnl add element …` (nftables 1.0.6).

use std::time::Duration;

use jitgate_enforce::{DnatKey, DnatTarget, ElemOp, GrantKey, L4};

use super::*;

/// An expected attribute: bytes, or a nest of attributes.
enum N {
    A(u16, Vec<u8>),
    Nest(u16, Vec<N>),
}

fn s(v: &str) -> Vec<u8> {
    let mut b = v.as_bytes().to_vec();
    b.push(0);
    b
}

fn ser(list: &[N]) -> Vec<u8> {
    let mut out = Vec::new();
    for n in list {
        let (ty, payload) = match n {
            N::A(t, b) => (*t, b.clone()),
            N::Nest(t, c) => (*t | 0x8000, ser(c)),
        };
        out.extend_from_slice(&((payload.len() + 4) as u16).to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(&payload);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }
    out
}

fn msg(ty: u16, flags: u16, seq: u32, nfgen: [u8; 4], attrs: &[N]) -> Vec<u8> {
    let body = ser(attrs);
    let mut out = Vec::new();
    out.extend_from_slice(&((16 + 4 + body.len()) as u32).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&nfgen);
    out.extend_from_slice(&body);
    out
}

fn begin(seq: u32) -> Vec<u8> {
    msg(0x10, 1, seq, [0, 0, 0, 10], &[])
}

fn end(seq: u32) -> Vec<u8> {
    msg(0x11, 1, seq, [0, 0, 0, 10], &[])
}

const ADD: u16 = 0x0a0c; // (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM
const DESTROY: u16 = 0x0a1e; // (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DESTROYSETELEM
const ADD_FLAGS: u16 = 0x405; // REQUEST | ACK | CREATE
const DEL_FLAGS: u16 = 0x005; // REQUEST | ACK
const INET: [u8; 4] = [1, 0, 0, 0];

fn elements(set: &str, elems: Vec<N>) -> Vec<N> {
    vec![N::A(1, s("jitgate")), N::A(2, s(set)), N::Nest(3, elems)]
}

fn elem(key: Vec<u8>, data: Option<Vec<u8>>, timeout_ms: Option<u64>) -> N {
    let mut c = vec![N::Nest(1, vec![N::A(1, key)])];
    if let Some(d) = data {
        c.push(N::Nest(2, vec![N::A(1, d)]));
    }
    if let Some(t) = timeout_ms {
        c.push(N::A(4, t.to_be_bytes().to_vec()));
    }
    N::Nest(1, c)
}

fn grant(src: &str, dest: Option<&str>, proto: L4, port: u16) -> GrantKey {
    GrantKey { source: src.parse().expect("net"), dest: dest.map(|d| d.parse().expect("addr")), proto, port }
}

fn add(key: GrantKey, ms: u64) -> ElemOp {
    ElemOp::AddGrant { key, timeout: Duration::from_millis(ms) }
}

fn del(key: GrantKey) -> ElemOp {
    ElemOp::DelGrant { key }
}

#[test]
fn one_element_matches_the_literal_bytes() {
    // What `nft --debug=mnl add element inet jitgate allow4 { 10.0.0.2 . tcp . 22 timeout 5s }`
    // shows for the element (nft also sends NFTA_SET_ELEM_LIST_SET_ID and puts the timeout
    // first; the kernel does not care about attribute order).
    let ops = [add(grant("10.0.0.2/32", None, L4::Tcp, 22), 5000)];
    #[rustfmt::skip]
    let message: [u8; 84] = [
        84, 0, 0, 0,   0x0c, 0x0a,   0x05, 0x04,   101, 0, 0, 0,   0, 0, 0, 0,
        1, 0, 0, 0,                                        // nfgenmsg: NFPROTO_INET, v0, res_id 0
        12, 0, 1, 0,   b'j', b'i', b't', b'g', b'a', b't', b'e', 0,       // TABLE
        11, 0, 2, 0,   b'a', b'l', b'l', b'o', b'w', b'4', 0, 0,          // SET (+1 pad)
        40, 0, 3, 0x80,                                                   // ELEMENTS (nested)
          36, 0, 1, 0x80,                                                 //  LIST_ELEM
            20, 0, 1, 0x80,                                               //   KEY
              16, 0, 1, 0,   10, 0, 0, 2,   6, 0, 0, 0,   0, 22, 0, 0,    //    VALUE addr|proto|port
            12, 0, 4, 0,   0, 0, 0, 0, 0, 0, 0x13, 0x88,                  //   TIMEOUT be64 5000 ms
    ];
    let mut expected = begin(100);
    expected.extend_from_slice(&message);
    expected.extend(end(102));
    assert_eq!(encode_batch(&ops, 100), expected);
}

#[test]
fn deletes_and_adds_are_grouped_per_set_and_keep_their_order() {
    let a = grant("10.0.0.1/32", None, L4::Tcp, 22);
    let b = grant("10.1.0.0/16", None, L4::Tcp, 22);
    let c = grant("10.0.0.3/32", None, L4::Udp, 53);
    let d = grant("2001:db8::/64", None, L4::Tcp, 443);
    let ops = [del(a), del(b), del(c), add(a, 90_000), add(d, 1_500)];
    let batch = encode(&ops, 7);

    let mut expected = begin(7);
    expected.extend(msg(
        DESTROY,
        DEL_FLAGS,
        8,
        INET,
        &elements(
            "allow4",
            vec![
                elem(vec![10, 0, 0, 1, 6, 0, 0, 0, 0, 22, 0, 0], None, None),
                elem(vec![10, 0, 0, 3, 17, 0, 0, 0, 0, 53, 0, 0], None, None),
            ],
        ),
    ));
    expected.extend(msg(
        DESTROY,
        DEL_FLAGS,
        9,
        INET,
        &elements("allow4net_16", vec![elem(vec![10, 1, 0, 0, 6, 0, 0, 0, 0, 22, 0, 0], None, None)]),
    ));
    expected.extend(msg(
        ADD,
        ADD_FLAGS,
        10,
        INET,
        &elements("allow4", vec![elem(vec![10, 0, 0, 1, 6, 0, 0, 0, 0, 22, 0, 0], None, Some(90_000))]),
    ));
    let mut v6 = vec![0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    v6.extend([6, 0, 0, 0, 0x01, 0xbb, 0, 0]);
    expected.extend(msg(ADD, ADD_FLAGS, 11, INET, &elements("allow6net_64", vec![elem(v6, None, Some(1_500))])));
    expected.extend(end(12));
    assert_eq!(batch.bytes, expected);
    assert_eq!(batch.next_seq, 13);
    let whats: Vec<_> = batch.messages.iter().map(|m| (m.seq, m.what.as_str())).collect();
    assert_eq!(
        whats,
        [
            (8, "delete 2 elements from set allow4"),
            (9, "delete 1 element from set allow4net_16"),
            (10, "add 1 element to set allow4"),
            (11, "add 1 element to set allow6net_64")
        ]
    );
}

#[test]
fn a_later_delete_is_not_moved_before_an_earlier_add() {
    let a = grant("10.0.0.1/32", None, L4::Tcp, 22);
    let batch = encode(&[add(a, 1000), del(a)], 1);
    let kinds: Vec<_> = batch.messages.iter().map(|m| m.what.split(' ').next().unwrap_or("")).collect();
    assert_eq!(kinds, ["add", "delete"]);
}

#[test]
fn ranges_are_keyed_by_their_network_address() {
    let ops = [add(grant("192.168.7.77/24", None, L4::Tcp, 22), 1000)];
    let mut expected = begin(1);
    expected.extend(msg(
        ADD,
        ADD_FLAGS,
        2,
        INET,
        &elements("allow4net_24", vec![elem(vec![192, 168, 7, 0, 6, 0, 0, 0, 0, 22, 0, 0], None, Some(1000))]),
    ));
    expected.extend(end(3));
    assert_eq!(encode_batch(&ops, 1), expected);
}

#[test]
fn gateway_grants_and_dnat_entries() {
    let g = grant("10.1.0.5/32", Some("10.9.2.2"), L4::Tcp, 22);
    let r = grant("10.1.0.0/16", Some("10.9.2.2"), L4::Tcp, 22);
    let dk = DnatKey { source: "10.1.0.5/32".parse().expect("net"), proto: L4::Tcp, public_port: 50022 };
    let target = DnatTarget { addr: "10.9.2.2".parse().expect("addr"), port: 22 };
    let ops = [
        add(g, 60_000),
        add(r, 60_000),
        ElemOp::AddDnat { key: dk, target, timeout: Duration::from_secs(60) },
        ElemOp::DelDnat { key: dk },
    ];
    let mut expected = begin(1);
    expected.extend(msg(
        ADD,
        ADD_FLAGS,
        2,
        INET,
        &elements("gw_allow4", vec![elem(vec![10, 1, 0, 5, 10, 9, 2, 2, 6, 0, 0, 0, 0, 22, 0, 0], None, Some(60_000))]),
    ));
    expected.extend(msg(
        ADD,
        ADD_FLAGS,
        3,
        INET,
        &elements(
            "gw_allow4net_16",
            vec![elem(vec![10, 1, 0, 0, 10, 9, 2, 2, 6, 0, 0, 0, 0, 22, 0, 0], None, Some(60_000))],
        ),
    ));
    // As `nft --debug=mnl add element inet jitgate dnat4 { … : 10.9.2.2 . 22 }` shows it.
    expected.extend(msg(
        ADD,
        ADD_FLAGS,
        4,
        INET,
        &elements(
            "dnat4",
            vec![elem(
                vec![10, 1, 0, 5, 6, 0, 0, 0, 0xc3, 0x66, 0, 0],
                Some(vec![10, 9, 2, 2, 0, 22, 0, 0]),
                Some(60_000),
            )],
        ),
    ));
    expected.extend(msg(
        DESTROY,
        DEL_FLAGS,
        5,
        INET,
        &elements("dnat4", vec![elem(vec![10, 1, 0, 5, 6, 0, 0, 0, 0xc3, 0x66, 0, 0], None, None)]),
    ));
    expected.extend(end(6));
    assert_eq!(encode_batch(&ops, 1), expected);
}

#[test]
fn a_timeout_is_never_zero() {
    // In a set with `flags timeout` and no default, timeout 0 would mean "never expires".
    let ops = [ElemOp::AddGrant { key: grant("10.0.0.1/32", None, L4::Tcp, 22), timeout: Duration::ZERO }];
    let mut expected = begin(1);
    expected.extend(msg(
        ADD,
        ADD_FLAGS,
        2,
        INET,
        &elements("allow4", vec![elem(vec![10, 0, 0, 1, 6, 0, 0, 0, 0, 22, 0, 0], None, Some(1))]),
    ));
    expected.extend(end(3));
    assert_eq!(encode_batch(&ops, 1), expected);
}

#[test]
fn an_empty_batch_is_begin_and_end() {
    let mut expected = begin(u32::MAX);
    expected.extend(end(0));
    assert_eq!(encode_batch(&[], u32::MAX), expected, "sequence numbers wrap");
}

#[test]
fn ipv6_gateway_grants_and_dnat_entries() {
    let g = grant("2001:db8::5/128", Some("fd08::2"), L4::Tcp, 22);
    let r = grant("2001:db8::/32", Some("fd08::2"), L4::Tcp, 22);
    let dk = DnatKey { source: "2001:db8::5/128".parse().expect("net"), proto: L4::Tcp, public_port: 50022 };
    let target = DnatTarget { addr: "fd08::2".parse().expect("addr"), port: 22 };
    let ops = [
        add(g, 60_000),
        add(r, 60_000),
        ElemOp::AddDnat { key: dk, target, timeout: Duration::from_secs(60) },
        ElemOp::DelDnat { key: dk },
    ];
    let src: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
    let net: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let vm: [u8; 16] = [0xfd, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let key = |s: &[u8; 16], tail: &[u8]| [&s[..], tail].concat();
    let tcp22 = [6, 0, 0, 0, 0, 22, 0, 0];
    let mut expected = begin(1);
    expected.extend(msg(
        ADD,
        ADD_FLAGS,
        2,
        INET,
        &elements("gw_allow6", vec![elem(key(&src, &[&vm[..], &tcp22].concat()), None, Some(60_000))]),
    ));
    expected.extend(msg(
        ADD,
        ADD_FLAGS,
        3,
        INET,
        &elements("gw_allow6net_32", vec![elem(key(&net, &[&vm[..], &tcp22].concat()), None, Some(60_000))]),
    ));
    // As `nft --debug=mnl add element inet jitgate dnat6 { 2001:db8::5 . tcp . 50022 timeout 60s
    // : fd08::2 . 22 }` shows it: a 24-byte key (16 + 4 + 4) and a 20-byte value (16 + 4).
    let dnat_key = key(&src, &[6, 0, 0, 0, 0xc3, 0x66, 0, 0]);
    expected.extend(msg(
        ADD,
        ADD_FLAGS,
        4,
        INET,
        &elements("dnat6", vec![elem(dnat_key.clone(), Some(key(&vm, &[0, 22, 0, 0])), Some(60_000))]),
    ));
    expected.extend(msg(DESTROY, DEL_FLAGS, 5, INET, &elements("dnat6", vec![elem(dnat_key, None, None)])));
    expected.extend(end(6));
    let batch = encode(&ops, 1);
    assert_eq!(batch.bytes, expected);
    assert_eq!(batch.messages[2].what, "add 1 element to map dnat6");
}

#[test]
fn unsupported_operations_are_left_out() {
    // No packet is both IPv6 and bound for an IPv4 VM; there is no NAT64 either.
    let mixed = grant("2001:db8::1/128", Some("10.9.2.2"), L4::Tcp, 22);
    let dk = DnatKey { source: "10.1.0.5/32".parse().expect("net"), proto: L4::Tcp, public_port: 50022 };
    let to6 = DnatTarget { addr: "fd08::2".parse().expect("addr"), port: 22 };
    let ops = [add(mixed, 1000), ElemOp::AddDnat { key: dk, target: to6, timeout: Duration::from_secs(1) }];
    let mut expected = begin(1);
    expected.extend(end(2));
    assert_eq!(encode_batch(&ops, 1), expected);
}

/// Walks the messages of a batch: (type, seq, number of elements, length of the ELEMENTS nest).
fn walk(bytes: &[u8]) -> Vec<(u16, u32, usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32_at(bytes, at).expect("len") as usize;
        let ty = u16_at(bytes, at + 4).expect("type");
        let seq = u32_at(bytes, at + 8).expect("seq");
        let mut a = at + 20;
        let (mut n, mut nest) = (0, 0);
        while a < at + len {
            let alen = u16_at(bytes, a).expect("alen") as usize;
            if u16_at(bytes, a + 2).expect("atype") & NLA_TYPE_MASK == NFTA_SET_ELEM_LIST_ELEMENTS {
                nest = alen;
                let mut e = a + 4;
                while e < a + alen {
                    n += 1;
                    e += align4(u16_at(bytes, e).expect("elen") as usize);
                }
            }
            a += align4(alen);
        }
        assert_eq!(a, at + len, "attributes fill the message exactly");
        out.push((ty, seq, n, nest));
        at += len;
    }
    out
}

#[test]
fn big_batches_are_split_into_messages_that_fit_a_nested_attribute() {
    let ops: Vec<_> = (0..10_000u32)
        .map(|i| {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            add(grant(&format!("{a}/32"), None, L4::Tcp, 22), 60_000)
        })
        .collect();
    let batch = encode(&ops, 1);
    let msgs = walk(&batch.bytes);
    assert_eq!(msgs.first().map(|m| m.0), Some(0x10));
    assert_eq!(msgs.last().map(|m| m.0), Some(0x11));
    let body = &msgs[1..msgs.len() - 1];
    assert!(body.len() > 1, "split");
    assert!(body.iter().all(|m| m.0 == ADD && m.3 < 65_536), "{body:?}");
    assert_eq!(body.iter().map(|m| m.2).sum::<usize>(), 10_000);
    let seqs: Vec<u32> = msgs.iter().map(|m| m.1).collect();
    assert_eq!(seqs, (1..=seqs.len() as u32).collect::<Vec<_>>());
    assert_eq!(batch.messages.iter().map(|m| m.elems.len()).sum::<usize>(), 10_000);
    // 36 bytes per element: about 360 kB for 10,000 exact IPv4 grants.
    assert!(batch.bytes.len() < 370_000, "{}", batch.bytes.len());
}

#[test]
fn acks_are_parsed_with_the_kernels_message_and_offset() {
    // An error for seq 9 (EEXIST) with NLM_F_CAPPED | NLM_F_ACK_TLVS, then a success for 10.
    let mut err = Vec::new();
    let orig_hdr = {
        let mut h = Vec::new();
        h.extend_from_slice(&200u32.to_ne_bytes());
        h.extend_from_slice(&ADD.to_ne_bytes());
        h.extend_from_slice(&ADD_FLAGS.to_ne_bytes());
        h.extend_from_slice(&9u32.to_ne_bytes());
        h.extend_from_slice(&0u32.to_ne_bytes());
        h
    };
    let tlvs = ser(&[N::A(NLMSGERR_ATTR_MSG, s("overlap")), N::A(NLMSGERR_ATTR_OFFS, 76u32.to_ne_bytes().to_vec())]);
    let len = 16 + 4 + 16 + tlvs.len();
    err.extend_from_slice(&(len as u32).to_ne_bytes());
    err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    err.extend_from_slice(&(NLM_F_CAPPED | NLM_F_ACK_TLVS).to_ne_bytes());
    err.extend_from_slice(&9u32.to_ne_bytes());
    err.extend_from_slice(&1234u32.to_ne_bytes());
    err.extend_from_slice(&(-17i32).to_ne_bytes());
    err.extend_from_slice(&orig_hdr);
    err.extend_from_slice(&tlvs);
    let mut ok = Vec::new();
    ok.extend_from_slice(&36u32.to_ne_bytes());
    ok.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    ok.extend_from_slice(&NLM_F_CAPPED.to_ne_bytes());
    ok.extend_from_slice(&10u32.to_ne_bytes());
    ok.extend_from_slice(&1234u32.to_ne_bytes());
    ok.extend_from_slice(&0i32.to_ne_bytes());
    ok.extend_from_slice(&orig_hdr[..8]);
    ok.extend_from_slice(&10u32.to_ne_bytes());
    ok.extend_from_slice(&0u32.to_ne_bytes());
    let mut buf = err;
    buf.extend(ok);
    assert_eq!(
        parse_acks(&buf),
        Ok(vec![
            Ack { seq: 9, errno: 17, message: Some("overlap".into()), offset: Some(76) },
            Ack { seq: 10, errno: 0, message: None, offset: None }
        ])
    );
    assert!(parse_acks(&buf[..30]).is_err(), "a truncated message is an error");
}

/// An `NLMSG_ERROR` message for `seq`: the errno, what it carries of the original message, then
/// `tlvs`.
fn error_message(flags: u16, seq: u32, errno: i32, original: &[u8], tlvs: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((16 + 4 + original.len() + tlvs.len()) as u32).to_ne_bytes());
    out.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&1234u32.to_ne_bytes());
    out.extend_from_slice(&(-errno).to_ne_bytes());
    out.extend_from_slice(original);
    out.extend_from_slice(tlvs);
    out
}

#[test]
fn an_error_that_quotes_the_whole_refused_message_is_read_past_it() {
    // Without NLM_F_CAPPED the kernel sends the refused message back whole; the attributes
    // start after it.
    let refused = msg(ADD, ADD_FLAGS, 9, INET, &elements("allow4", vec![elem(vec![10, 0, 0, 1], None, Some(1000))]));
    let tlvs = ser(&[N::A(NLMSGERR_ATTR_MSG, s("overlap")), N::A(NLMSGERR_ATTR_OFFS, 40u32.to_ne_bytes().to_vec())]);
    let buf = error_message(NLM_F_ACK_TLVS, 9, 17, &refused, &tlvs);
    assert_eq!(
        parse_acks(&buf),
        Ok(vec![Ack { seq: 9, errno: 17, message: Some("overlap".into()), offset: Some(40) }])
    );
}

#[test]
fn attributes_after_an_error_are_read_only_when_the_kernel_flags_them() {
    let refused = msg(ADD, ADD_FLAGS, 9, INET, &[]);
    let tlvs = ser(&[N::A(NLMSGERR_ATTR_MSG, s("overlap"))]);
    let buf = error_message(NLM_F_CAPPED, 9, 17, &refused[..16], &tlvs);
    assert_eq!(parse_acks(&buf), Ok(vec![Ack { seq: 9, errno: 17, message: None, offset: None }]));
    let buf = error_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, 9, 17, &refused[..16], &tlvs);
    assert_eq!(parse_acks(&buf).map(|a| a[0].message.clone()), Ok(Some("overlap".into())));
}

#[test]
fn a_malformed_attribute_after_an_error_ends_the_reading() {
    let refused = msg(ADD, ADD_FLAGS, 9, INET, &[]);
    let flags = NLM_F_CAPPED | NLM_F_ACK_TLVS;
    let first = ser(&[N::A(NLMSGERR_ATTR_MSG, s("overlap"))]);
    // An attribute longer than what is left of the message, and one of length 0.
    for len in [200u16, 0] {
        let bad = [&len.to_ne_bytes()[..], &NLMSGERR_ATTR_OFFS.to_ne_bytes(), &[1, 0, 0, 0]].concat();
        let buf = error_message(flags, 9, 17, &refused[..16], &[&first[..], &bad[..]].concat());
        assert_eq!(
            parse_acks(&buf),
            Ok(vec![Ack { seq: 9, errno: 17, message: Some("overlap".into()), offset: None }]),
            "{bad:?}"
        );
    }
}

#[test]
fn an_empty_attribute_after_an_error_is_skipped() {
    let refused = msg(ADD, ADD_FLAGS, 9, INET, &[]);
    // A flag-like attribute without payload (type 5, not one we read), then the message.
    let tlvs = ser(&[N::A(5, vec![]), N::A(NLMSGERR_ATTR_MSG, s("overlap"))]);
    let buf = error_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, 9, 17, &refused[..16], &tlvs);
    assert_eq!(parse_acks(&buf).map(|a| a[0].message.clone()), Ok(Some("overlap".into())));
}

#[test]
fn a_message_of_a_bare_header_is_read_and_a_shorter_length_is_refused() {
    let header = |len: u32, ty: u16, seq: u32| {
        let mut h = Vec::new();
        h.extend_from_slice(&len.to_ne_bytes());
        h.extend_from_slice(&ty.to_ne_bytes());
        h.extend_from_slice(&0u16.to_ne_bytes());
        h.extend_from_slice(&seq.to_ne_bytes());
        h.extend_from_slice(&0u32.to_ne_bytes());
        h
    };
    // NLMSG_NOOP (1) with no payload, then a 20-byte message.
    let mut buf = header(16, 1, 3);
    buf.extend(begin(4));
    let read = messages(&buf).map(|m| m.iter().map(|m| (m.ty, m.seq, m.bytes.len())).collect::<Vec<_>>());
    assert_eq!(read, Ok(vec![(1, 3, 16), (0x10, 4, 20)]));
    for short in [0, 4, 15] {
        let mut buf = header(short, 1, 3);
        buf.extend(begin(4));
        assert!(messages(&buf).is_err(), "length {short}");
    }
}

#[test]
fn an_error_offset_names_the_operation() {
    let a = grant("10.0.0.1/32", None, L4::Tcp, 22);
    let b = grant("10.0.0.2/32", None, L4::Tcp, 22);
    let ops = [add(a, 1000), add(b, 2000)];
    let batch = encode(&ops, 1);
    let msg = &batch.messages[0];
    assert_eq!(msg.elems.iter().map(|e| e.1).collect::<Vec<_>>(), [0, 1]);
    // The kernel points at the LIST_ELEM attribute of the refused element.
    let second = msg.elems[1].0 as u32;
    assert_eq!(batch.describe(&ops, 2, Some(second)), "add grant 10.0.0.2/32 -> tcp/22 timeout 2000ms (set allow4)");
    assert_eq!(batch.describe(&ops, 2, Some(20)), "add 2 elements to set allow4", "offset of the set name");
    assert_eq!(batch.describe(&ops, 2, None), "add 2 elements to set allow4");
    assert_eq!(batch.describe(&ops, 1, None), "the batch");
}

#[test]
fn the_table_delete_and_the_probe() {
    let mut expected = begin(5);
    expected.extend(msg(0x0a02, DEL_FLAGS, 6, INET, &[N::A(1, s("jitgate"))]));
    expected.extend(end(7));
    assert_eq!(encode_delete_table(5).bytes, expected);
    let mut expected = begin(5);
    expected.extend(msg(
        DESTROY,
        DEL_FLAGS,
        6,
        INET,
        &elements_in("jitgate-probe-absent", "absent", vec![elem(vec![0; 4], None, None)]),
    ));
    expected.extend(end(7));
    assert_eq!(encode_probe(5).bytes, expected);
}

fn elements_in(table: &str, set: &str, elems: Vec<N>) -> Vec<N> {
    vec![N::A(1, s(table)), N::A(2, s(set)), N::Nest(3, elems)]
}
