use super::*;
use crate::encode_batch;

fn grant(src: &str, dest: Option<&str>, port: u16, ms: u64) -> ElemOp {
    ElemOp::AddGrant {
        key: GrantKey {
            source: src.parse().expect("net"),
            dest: dest.map(|d| d.parse().expect("addr")),
            proto: L4::Tcp,
            port,
        },
        timeout: Duration::from_millis(ms),
    }
}

fn del(src: &str, port: u16) -> ElemOp {
    ElemOp::DelGrant { key: GrantKey { source: src.parse().expect("net"), dest: None, proto: L4::Udp, port } }
}

fn dnat(src: &str, to: &str) -> ElemOp {
    ElemOp::AddDnat {
        key: DnatKey { source: src.parse().expect("net"), proto: L4::Tcp, public_port: 50022 },
        target: DnatTarget { addr: to.parse().expect("addr"), port: 22 },
        timeout: Duration::from_millis(1500),
    }
}

#[test]
fn a_batch_reads_back_as_its_operations_grouped_by_set() {
    let ops = vec![
        del("10.0.0.1/32", 22),
        del("2001:db8::/32", 22),
        grant("10.0.0.2/32", None, 22, 1000),
        grant("10.1.0.0/16", None, 22, 2000),
        grant("10.0.0.3/32", None, 3389, 3000),
        grant("10.0.0.0/8", Some("192.168.0.4"), 22, 4000),
        dnat("2001:db8::5/128", "fd00::2"),
        ElemOp::DelDnat {
            key: DnatKey { source: "10.0.0.0/24".parse().expect("net"), proto: L4::Udp, public_port: 1 },
        },
    ];
    let d = decode_batch(&encode_batch(&ops, 7)).expect("decodes");
    assert_eq!((d.begin_seq, d.end_seq, d.messages), (7, 7 + 8, 7));
    // Within the run of adds, the two allow4 grants share one message, before allow4net_16's.
    let order = [0, 1, 2, 4, 3, 5, 6, 7];
    assert_eq!(d.ops, order.iter().map(|i| ops[*i]).collect::<Vec<_>>());
}

#[test]
fn a_range_is_read_back_as_its_network_and_a_timeout_in_whole_milliseconds() {
    let ops = [grant("10.1.2.77/24", None, 22, 0), grant("10.0.0.1/32", None, 22, 1)];
    let d = decode_batch(&encode_batch(&ops, 1)).expect("decodes");
    assert_eq!(d.ops, [grant("10.1.2.0/24", None, 22, 1), grant("10.0.0.1/32", None, 22, 1)]);
}

#[test]
fn what_the_kernel_would_read_differently_is_refused() {
    let bytes = encode_batch(&[grant("10.1.2.0/24", None, 22, 5)], 1);
    assert!(decode_batch(&bytes).is_ok());
    // The key's address is the last field but two: make it 10.1.2.1 inside a /24 set.
    let at = bytes.windows(4).position(|w| w == [10, 1, 2, 0]).expect("key");
    let mut host_bits = bytes.clone();
    host_bits[at + 3] = 1;
    let e = decode_batch(&host_bits).expect_err("host bits");
    assert!(e.contains("host bits"), "{e}");
    let mut proto = bytes.clone();
    proto[at + 4] = 1;
    assert!(decode_batch(&proto).expect_err("protocol").contains("protocol"));
    let mut padding = bytes.clone();
    padding[at + 10] = 1;
    assert!(decode_batch(&padding).is_err(), "port padding");
    assert!(decode_batch(&bytes[..bytes.len() - 4]).is_err(), "cut short");
    assert!(decode_batch(&[bytes.clone(), vec![0; 4]].concat()).is_err(), "trailing bytes");
    let mut set = bytes.clone();
    let at = set.windows(13).position(|w| w == b"allow4net_24\0").expect("set");
    set[at + 10..at + 12].copy_from_slice(b"32");
    assert!(decode_batch(&set).expect_err("no such set").contains("allow4net_32"));
}

#[test]
fn an_empty_batch_is_begin_and_end() {
    let d = decode_batch(&encode_batch(&[], u32::MAX)).expect("decodes");
    assert_eq!((d.begin_seq, d.end_seq, d.messages, d.ops.len()), (u32::MAX, 0, 0, 0));
}

#[test]
fn refusals_name_the_operation_at_the_offset() {
    let ops = [grant("10.0.0.2/32", None, 22, 1000), grant("10.0.0.3/32", None, 23, 1000)];
    let offsets = element_offsets(&ops, 40);
    assert_eq!(offsets.len(), 2);
    let (seq, offset, idx) = offsets[1];
    assert_eq!(idx, 1);
    assert_eq!(describe_refusal(&ops, 40, seq, Some(offset as u32)), crate::describe(&ops[1]));
    assert_eq!(describe_refusal(&ops, 40, 40, None), "the batch");
    assert!(describe_refusal(&ops, 40, seq, Some(0)).starts_with("add 2 elements"));
}

#[test]
fn answers_are_read_by_the_socket_parsers() {
    let mut ack = Vec::new();
    ack.extend_from_slice(&36u32.to_ne_bytes());
    ack.extend_from_slice(&2u16.to_ne_bytes());
    ack.extend_from_slice(&0x100u16.to_ne_bytes());
    ack.extend_from_slice(&9u32.to_ne_bytes());
    ack.extend_from_slice(&[0; 4]);
    ack.extend_from_slice(&(-17i32).to_ne_bytes());
    ack.extend_from_slice(&[0; 16]);
    let a = read_answer(&ack, 9).expect("reads");
    assert_eq!(a.acks, [AckRead { seq: 9, errno: 17, message: None, offset: None }]);
    assert_eq!(a.errors, [17]);
    assert!(read_answer(&[200, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0], 3).is_err());
}

#[test]
fn an_error_of_i32_min_is_read_without_overflowing() {
    // Found by the netlink_answers fuzz target: negating the error overflowed.
    let mut ack = Vec::new();
    ack.extend_from_slice(&36u32.to_ne_bytes());
    ack.extend_from_slice(&2u16.to_ne_bytes());
    ack.extend_from_slice(&0x100u16.to_ne_bytes());
    ack.extend_from_slice(&4u32.to_ne_bytes());
    ack.extend_from_slice(&[0; 4]);
    ack.extend_from_slice(&i32::MIN.to_ne_bytes());
    ack.extend_from_slice(&[0; 16]);
    let a = read_answer(&ack, 4).expect("reads");
    assert_eq!((a.acks[0].errno, a.errors.as_slice()), (i32::MAX, &[i32::MAX][..]));
}
