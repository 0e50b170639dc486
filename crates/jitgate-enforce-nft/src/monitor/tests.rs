use super::*;
use crate::netlink::Writer;

const OURS: u32 = 4001;
const NFT_CHILD: u32 = 5123;
const OPERATOR: u32 = 777;

/// One event message as the kernel sends it: header with the sender's port, `nfgenmsg`, attributes.
fn event(w: &mut Writer, msg: u16, port: u32, family: u8, attrs: &[(u16, Vec<u8>)]) {
    let start = w.begin_msg((NFNL_SUBSYS_NFTABLES << 8) | msg, 0, 0, family, 0);
    w.buf[start + 12..start + 16].copy_from_slice(&port.to_ne_bytes());
    for (ty, data) in attrs {
        w.attr(*ty, data);
    }
    w.end_msg(start);
}

fn name(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn generation(w: &mut Writer, port: u32, id: u32, pid: u32, process: &str) {
    let attrs = [
        (NFTA_GEN_ID, id.to_be_bytes().to_vec()),
        (NFTA_GEN_PROC_PID, pid.to_be_bytes().to_vec()),
        (NFTA_GEN_PROC_NAME, name(process)),
    ];
    event(w, NFT_MSG_NEWGEN, port, 0, &attrs);
}

fn own() -> Own {
    let mut o = Own::new(OURS);
    o.child(NFT_CHILD);
    o
}

fn feed_all(buf: &[u8]) -> Vec<Tampered> {
    let mut g = Generations::default();
    let own = own();
    parse_events(buf).expect("parses").iter().filter_map(|e| g.feed(e, &own)).collect()
}

#[test]
fn events_are_parsed_with_their_port_table_and_generation() {
    let mut w = Writer::default();
    event(&mut w, NFT_MSG_DELTABLE, OPERATOR, NFPROTO_INET, &[(1, name("jitgate"))]);
    event(&mut w, NFT_MSG_DELTABLE, OPERATOR, 2, &[(1, name("jitgate"))]);
    event(&mut w, NFT_MSG_DELSET, OPERATOR, NFPROTO_INET, &[(1, name("filter")), (2, name("allow4"))]);
    generation(&mut w, OPERATOR, 42, 9999, "nft");
    let events = parse_events(&w.buf).expect("parses");
    assert_eq!(
        events,
        vec![
            Event::Object { ty: NFT_MSG_DELTABLE, port: OPERATOR, ours: true },
            Event::Object { ty: NFT_MSG_DELTABLE, port: OPERATOR, ours: false },
            Event::Object { ty: NFT_MSG_DELSET, port: OPERATOR, ours: false },
            Event::Generation { port: OPERATOR, id: 42, pid: Some(9999), process: Some("nft".into()) },
        ]
    );
    assert!(parse_events(&w.buf[..10]).expect("a short tail is no message").is_empty());
    assert!(parse_events(&[0xff; 20]).is_err(), "a length past the end is an error");
}

#[test]
fn a_generation_in_which_someone_else_deleted_our_table_rings_once_naming_them() {
    let mut w = Writer::default();
    for ty in [NFT_MSG_DELRULE, NFT_MSG_DELCHAIN, NFT_MSG_DELSET, NFT_MSG_DELTABLE] {
        event(&mut w, ty, OPERATOR, NFPROTO_INET, &[(1, name("jitgate"))]);
    }
    generation(&mut w, OPERATOR, 7, 9999, "nft");
    let told = feed_all(&w.buf);
    assert_eq!(told, vec![Tampered { what: "table inet jitgate deleted by nft (pid 9999), generation 7".into() }]);
}

#[test]
fn our_own_changes_and_other_tables_do_not_ring() {
    let mut w = Writer::default();
    // Our replacement (an nft process of ours) and our element batch.
    event(&mut w, NFT_MSG_DELTABLE, NFT_CHILD, NFPROTO_INET, &[(1, name("jitgate"))]);
    event(&mut w, NFT_MSG_NEWTABLE, NFT_CHILD, NFPROTO_INET, &[(1, name("jitgate"))]);
    generation(&mut w, NFT_CHILD, 8, NFT_CHILD, "nft");
    event(&mut w, NFT_MSG_NEWSETELEM, OURS, NFPROTO_INET, &[(1, name("jitgate"))]);
    generation(&mut w, OURS, 9, 1, "jitgate");
    // Someone else's table, and an empty generation.
    event(&mut w, NFT_MSG_NEWRULE, OPERATOR, NFPROTO_INET, &[(1, name("filter"))]);
    generation(&mut w, OPERATOR, 10, 9999, "nft");
    generation(&mut w, OPERATOR, 11, 9999, "nft");
    assert_eq!(feed_all(&w.buf), vec![]);
}

#[test]
fn other_changes_to_our_table_are_counted_by_kind() {
    let mut w = Writer::default();
    event(&mut w, NFT_MSG_DELRULE, OPERATOR, NFPROTO_INET, &[(1, name("jitgate"))]);
    event(&mut w, NFT_MSG_NEWSETELEM, OPERATOR, NFPROTO_INET, &[(1, name("jitgate"))]);
    event(&mut w, NFT_MSG_NEWSETELEM, OPERATOR, NFPROTO_INET, &[(1, name("jitgate"))]);
    generation(&mut w, OPERATOR, 12, 31, "iptables-nft");
    let told = feed_all(&w.buf);
    assert_eq!(told.len(), 1);
    assert_eq!(
        told[0].what,
        "table inet jitgate changed (1 × rule deleted, 2 × element added) by iptables-nft (pid 31), generation 12"
    );
}

#[test]
fn lost_events_ring_and_start_afresh() {
    let mut g = Generations::default();
    let own = own();
    assert_eq!(g.feed(&Event::Object { ty: NFT_MSG_DELSET, port: OPERATOR, ours: true }, &own), None);
    assert!(g.lost().what.contains("lost"));
    let gen = Event::Generation { port: OPERATOR, id: 1, pid: None, process: None };
    assert_eq!(g.feed(&gen, &own), None, "what was pending went with the loss");
}

#[test]
fn only_the_latest_nft_processes_count_as_ours() {
    let mut o = Own::new(OURS);
    for pid in 100..100 + CHILDREN as u32 + 1 {
        o.child(pid);
    }
    assert!(o.is_ours(OURS) && o.is_ours(100 + CHILDREN as u32));
    assert!(!o.is_ours(100), "the oldest was forgotten");
    assert!(!o.is_ours(OPERATOR));
}
