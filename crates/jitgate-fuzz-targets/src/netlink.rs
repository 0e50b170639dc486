//! The nfnetlink encoder against its decoder, and the parsers of the kernel's answers.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;
use jitgate_enforce::{DnatKey, DnatTarget, ElemOp, GrantKey, L4};
use jitgate_enforce_nft::decode::{decode_batch, describe_refusal, element_offsets, read_answer};
use jitgate_enforce_nft::{describe, dnat_map, encode_batch, grant_set};

/// Reads the fuzzer's bytes as numbers, zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }

    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take())
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take())
    }

    /// An address of four bytes: IPv4 as it is, IPv6 inside 2001:db8::/32 (first and last
    /// bytes), so that short inputs still meet the same networks often.
    fn addr(&mut self, v4: bool) -> IpAddr {
        let [a, b, c, d] = self.take::<4>();
        if v4 {
            IpAddr::V4(Ipv4Addr::new(a, b, c, d))
        } else {
            IpAddr::V6(Ipv6Addr::from([0x20, 0x01, 0x0d, 0xb8, a, b, 0, 0, 0, 0, 0, 0, 0, 0, c, d]))
        }
    }
}

fn nth(addr: IpAddr, i: u32) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(i))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(u128::from(i)))),
    }
}

/// One operation spec: a flags byte (kind, family, gateway, a target of the other family,
/// protocol, repeat), source, prefix length, destination or DNAT target, port, timeout, and a
/// repeat count (the same operation for that many consecutive sources: batches past 64 KiB).
fn ops(b: &mut Bytes<'_>) -> Vec<ElemOp> {
    let mut out = Vec::new();
    while !b.0.is_empty() && out.len() < 4_096 {
        let flags = b.u8();
        let v4 = flags & 0x04 == 0;
        let source = b.addr(v4);
        let max = if v4 { 32 } else { 128 };
        let prefix = b.u8() % (max + 1);
        let other = flags & 0x10 != 0;
        let dest = b.addr(v4 != other);
        let proto = if flags & 0x20 == 0 { L4::Tcp } else { L4::Udp };
        let port = b.u16();
        let timeout = match b.u8() % 4 {
            0 => Duration::from_nanos(u64::from(b.u32())),
            1 => Duration::from_millis(u64::from(b.u32())),
            2 => Duration::from_millis(b.u64()),
            _ => Duration::from_secs(b.u64()),
        };
        let repeat = if flags & 0x40 != 0 { u32::from(b.u8()) * 8 + 1 } else { 1 };
        for i in 0..repeat {
            let Ok(source) = IpNet::new(nth(source, i), prefix) else { continue };
            let grant = GrantKey { source, dest: (flags & 0x08 != 0).then_some(dest), proto, port };
            let dnat = DnatKey { source, proto, public_port: port };
            out.push(match flags & 0x03 {
                0 => ElemOp::AddGrant { key: grant, timeout },
                1 => ElemOp::DelGrant { key: grant },
                2 => ElemOp::AddDnat { key: dnat, target: DnatTarget { addr: dest, port: !port }, timeout },
                _ => ElemOp::DelDnat { key: dnat },
            });
        }
    }
    out
}

fn is_add(op: &ElemOp) -> bool {
    matches!(op, ElemOp::AddGrant { .. } | ElemOp::AddDnat { .. })
}

/// The set an operation goes to, `None` when the backend cannot express it (an entry mixing
/// IPv4 and IPv6).
fn set_of(op: &ElemOp) -> Option<String> {
    match op {
        ElemOp::AddGrant { key, .. } | ElemOp::DelGrant { key } => grant_set(key).ok(),
        ElemOp::AddDnat { key, target, .. } if key.source.addr().is_ipv4() == target.addr.is_ipv4() => {
            dnat_map(key).ok()
        }
        ElemOp::AddDnat { .. } => None,
        ElemOp::DelDnat { key } => dnat_map(key).ok(),
    }
}

/// The operation as the kernel reads it: a range's network address, a timeout of whole
/// milliseconds, at least one.
fn normalised(op: &ElemOp) -> ElemOp {
    let ms = |t: &Duration| Duration::from_millis(u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1));
    match *op {
        ElemOp::AddGrant { key, timeout } => {
            ElemOp::AddGrant { key: GrantKey { source: key.source.trunc(), ..key }, timeout: ms(&timeout) }
        }
        ElemOp::DelGrant { key } => ElemOp::DelGrant { key: GrantKey { source: key.source.trunc(), ..key } },
        ElemOp::AddDnat { key, target, timeout } => {
            ElemOp::AddDnat { key: DnatKey { source: key.source.trunc(), ..key }, target, timeout: ms(&timeout) }
        }
        ElemOp::DelDnat { key } => ElemOp::DelDnat { key: DnatKey { source: key.source.trunc(), ..key } },
    }
}

/// What `encode_batch` promises to send for `ops`: each run of adds (or deletes) in its order,
/// grouped by set in order of first appearance, without what cannot be expressed.
fn expected(ops: &[ElemOp]) -> Vec<ElemOp> {
    let mut out = Vec::new();
    let mut rest = ops;
    while let Some(first) = rest.first() {
        let run = rest.iter().take_while(|op| is_add(op) == is_add(first)).count();
        let mut groups: Vec<(String, Vec<ElemOp>)> = Vec::new();
        for op in &rest[..run] {
            let Some(set) = set_of(op) else { continue };
            match groups.iter_mut().find(|(s, _)| *s == set) {
                Some((_, v)) => v.push(normalised(op)),
                None => groups.push((set, vec![normalised(op)])),
            }
        }
        out.extend(groups.into_iter().flat_map(|(_, v)| v));
        rest = &rest[run..];
    }
    out
}

/// An element's key.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Grant(GrantKey),
    Dnat(DnatKey),
}

/// Which elements a table holds after `ops`, applied one by one (an element by its set and key).
fn elements_after(ops: &[ElemOp]) -> BTreeMap<(String, Key), bool> {
    let mut present = BTreeMap::new();
    for op in ops {
        let Some(set) = set_of(op) else { continue };
        let key = match normalised(op) {
            ElemOp::AddGrant { key, .. } | ElemOp::DelGrant { key } => Key::Grant(key),
            ElemOp::AddDnat { key, .. } | ElemOp::DelDnat { key } => Key::Dnat(key),
        };
        present.insert((set, key), is_add(op));
    }
    present
}

/// Operations built from the bytes, encoded, decoded: the same operations (as the kernel keeps
/// them), the same elements in the table afterwards, and every refusal the kernel could point
/// at named as the operation it points at.
pub fn netlink(data: &[u8]) {
    let mut b = Bytes(data);
    let seq = b.u32();
    let (refused_seq, refused_offset) = (b.u32(), b.u32());
    let ops = ops(&mut b);
    let bytes = encode_batch(&ops, seq);
    let decoded = decode_batch(&bytes).unwrap_or_else(|e| panic!("the encoder's batch does not decode: {e}"));
    assert_eq!(decoded.begin_seq, seq);
    assert_eq!(decoded.end_seq, seq.wrapping_add(decoded.messages as u32 + 1));
    let want = expected(&ops);
    assert_eq!(decoded.ops.len(), want.len(), "{} operations decoded, {} sent", decoded.ops.len(), want.len());
    if let Some(i) = (0..want.len()).find(|i| decoded.ops[*i] != want[*i]) {
        panic!("operation {i}: {:?} decoded, {:?} sent", decoded.ops[i], want[i]);
    }
    assert_eq!(elements_after(&decoded.ops), elements_after(&ops), "the batch leaves other elements");
    // Each check encodes the batch again: a sample of a few elements, the first and last of
    // every message among them.
    let offsets = element_offsets(&ops, seq);
    let step = offsets.len() / 4 + 1;
    let ends = offsets.windows(2).filter(|w| w[0].0 != w[1].0).flat_map(|w| [w[0], w[1]]);
    let sample: Vec<_> = offsets.iter().copied().step_by(step).chain(ends).chain(offsets.last().copied()).collect();
    for (msg_seq, offset, idx) in sample {
        let offset = u32::try_from(offset).unwrap_or(u32::MAX);
        assert_eq!(describe_refusal(&ops, seq, msg_seq, Some(offset)), describe(&ops[idx]));
    }
    let _ = describe_refusal(&ops, seq, refused_seq, Some(refused_offset));
}

/// Any datagram read as the kernel's answer to a batch (acknowledgements) and to a dump.
pub fn netlink_answers(data: &[u8]) {
    let mut b = Bytes(data);
    let seq = b.u32();
    let datagram = b.0;
    let Ok(answer) = read_answer(datagram, seq) else { return };
    assert!(answer.elements <= datagram.len() / 4, "{} elements in {} bytes", answer.elements, datagram.len());
    assert!(answer.acks.len() <= datagram.len() / 20);
    let ops = [
        ElemOp::DelGrant {
            key: GrantKey {
                source: IpNet::from(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                dest: None,
                proto: L4::Tcp,
                port: 22,
            },
        },
        ElemOp::AddGrant {
            key: GrantKey {
                source: IpNet::from(IpAddr::V4(Ipv4Addr::BROADCAST)),
                dest: None,
                proto: L4::Udp,
                port: 53,
            },
            timeout: Duration::from_secs(1),
        },
    ];
    for ack in &answer.acks {
        let _ = describe_refusal(&ops, seq, ack.seq, ack.offset);
    }
}
