//! The agent protocol: what the server reads from agents (a join, a report) and what an agent
//! reads from the server (its state, which it turns into a plan and a netlink batch).

use jitgate_api_types::agent::{AppliedIn, JoinIn, JoinOut, RotateOut, StateOut};
use jitgate_api_types::parse_json;
use jitgate_core::enforcement::{check_join, limits, printable, report_error, JoinDraft};
use jitgate_core::ids::validate_vm_name;
use jitgate_enforce::Mode;

use crate::MESSAGE_LIMIT;

/// The first byte picks the message: 0 a join, 1 a report (the server reads them), 2 and 3 the
/// state of a host and of a gateway agent, 4 the answers to a join and a rotation (the agent
/// reads them); the rest is the body.
pub fn agent_messages(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else { return };
    match kind % 5 {
        0 => join(body),
        1 => applied(body),
        2 => state(body, Mode::Host),
        3 => state(body, Mode::Gateway),
        _ => {
            let _ = serde_json::from_slice::<JoinOut>(body);
            let _ = serde_json::from_slice::<RotateOut>(body);
        }
    }
}

fn join(body: &[u8]) {
    let Ok(input) = parse_json::<JoinIn>(body) else { return };
    let draft = JoinDraft::from(input);
    let checked = match check_join(draft) {
        Ok(c) => c,
        Err(e) => {
            assert!(e.message.len() <= MESSAGE_LIMIT, "a {}-byte refusal of a join", e.message.len());
            return;
        }
    };
    let agent = &checked.agent;
    assert!(!checked.join_token.is_empty() && checked.join_token.trim() == checked.join_token);
    assert_eq!(validate_vm_name(&agent.name), Ok(()));
    assert!(agent.addresses.len() <= limits::ADDRESSES);
    for (i, a) in agent.addresses.iter().enumerate() {
        assert!(!agent.addresses[..i].contains(a), "{a} kept twice");
    }
    assert!(agent.hostname.chars().count() <= limits::HOSTNAME && !agent.hostname.chars().any(char::is_control));
}

fn applied(body: &[u8]) {
    let Ok(input) = parse_json::<AppliedIn>(body) else { return };
    let Some(error) = input.nftables_error else { return };
    // What operators and requesters are shown: printable, bounded, a fixed point.
    let shown = report_error(&error);
    assert!(shown.chars().count() <= limits::REPORT_ERROR + 1, "{} characters", shown.chars().count());
    assert!(!shown.chars().any(char::is_control) && shown.trim() == shown && !shown.contains("  "), "{shown:?}");
    assert_eq!(printable(&shown, limits::REPORT_ERROR), shown, "cleaning {error:?} twice changes it");
}

/// A state as the agent reads it: the JSON reads back as the same state, and (with the `agent`
/// feature) the agent's plan for it encodes and decodes.
fn state(body: &[u8], mode: Mode) {
    let Ok(state) = serde_json::from_slice::<StateOut>(body) else { return };
    let bytes = serde_json::to_vec(&state).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(serde_json::from_slice::<StateOut>(&bytes).ok().as_ref(), Some(&state), "the state reads back");
    #[cfg(feature = "agent")]
    enforce(&state, mode);
    #[cfg(not(feature = "agent"))]
    let _ = mode;
}

/// The state as the agent enforces it (after 1.5 s on the way): its desired state, the table's
/// script, and the batch that adds every live element to a table with the same ports.
#[cfg(feature = "agent")]
fn enforce(state: &StateOut, mode: Mode) {
    use std::time::{Duration, Instant};

    use jitgate_agent::convert;
    use jitgate_enforce::{plan, Desired, ElemOp, Plan};
    use jitgate_enforce_nft::decode::decode_batch;
    use jitgate_enforce_nft::{encode_batch, ruleset};

    let asked = Instant::now();
    let desired = convert::desired(state, mode, asked, Duration::from_millis(1500));
    assert_eq!(desired.mode, mode);
    for (key, end) in &desired.grants {
        assert_eq!(key.source.trunc(), key.source, "{key:?}: a source with host bits");
        assert!(*end >= asked, "{key:?} ends before the answer came");
        if let Some(dest) = key.dest {
            assert_eq!(dest.is_ipv4(), key.is_v4(), "{key:?}: a gateway grant across address families");
        }
    }
    for (key, (target, _)) in &desired.dnat {
        assert_eq!(key.source.addr().is_ipv4(), target.addr.is_ipv4(), "{key:?} → {target:?}");
    }
    let script = ruleset(&desired, asked);
    assert!(script.contains("table inet jitgate"));
    // nft reads at most eight digits in each part of a time.
    for t in script.split(" timeout ").skip(1).filter_map(|rest| rest.split([' ', ',', '\n']).next()) {
        assert!(t.split(|c: char| !c.is_ascii_digit()).all(|digits| digits.len() <= 8), "timeout {t}");
    }
    // From a table with the same ports and no element, a batch adding every live element; from
    // the state it makes, nothing.
    let bare = Desired { grants: Default::default(), dnat: Default::default(), ..desired.clone() };
    let ops = match plan(Some(&bare), &desired, asked) {
        Plan::Batch(ops) => ops,
        Plan::Nothing => Vec::new(),
        Plan::Replace(_) => panic!("the same protected ports, yet a replace"),
    };
    assert_eq!(plan(Some(&desired.live_at(asked)), &desired, asked), Plan::Nothing, "planning again changes");
    assert!(ops.iter().all(|op| matches!(op, ElemOp::AddGrant { .. } | ElemOp::AddDnat { .. })));
    let decoded = decode_batch(&encode_batch(&ops, 1)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(decoded.ops.len(), ops.len(), "every element of the plan is in the batch");
}
