//! The server out of reach for ten minutes, on a paused clock: the agent keeps what it applied
//! and opens nothing new, the kernel closes what ends meanwhile, and at the first answer the
//! agent takes the server's state as it is then (a revoke made during the outage closes at once).

use super::*;

const OUTAGE: Duration = Duration::from_secs(600);

/// The grants in the table now.
fn granted(h: &FakeHandle) -> Vec<GrantKey> {
    h.table().map(|t| t.grants.into_keys().collect()).unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn ten_minutes_without_the_server_open_nothing_and_the_first_answer_brings_its_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fw, h) = firewall();
    let mut agent = Agent::start(config(dir.path(), Some("join-token-1")), fw);
    assert!(matches!(agent.next().await, Call::Join(_)));
    agent.poll().await;
    // .1 ends during the outage, .2 is revoked on the server during it, .3 outlives it.
    agent.answer(Ok(state(1, &[("10.0.0.1", 120), ("10.0.0.2", 1800), ("10.0.0.3", 1800)])));
    assert_eq!(agent.report().await.revision, 1);
    let applied = h.counts();
    let (_, after, start) = agent.poll().await;
    assert_eq!(after, Some(1));

    // Ten minutes of every kind of failure: no answer, a server that answers 503, a body that
    // is not a state.
    let failure = |i: usize| match i % 3 {
        0 => unreachable(),
        1 => Err(CallError::Status { status: reqwest::StatusCode::SERVICE_UNAVAILABLE, body: String::new() }),
        _ => Err(CallError::Unreadable("not JSON".into())),
    };
    let mut polls = 0usize;
    let elapsed = loop {
        agent.answer(failure(polls));
        let (_, after, at) = agent.poll().await;
        polls += 1;
        assert_eq!(after, Some(1), "still asking from the revision it applied");
        let elapsed = at - start;
        assert_eq!(h.counts(), applied, "nothing applied while the server is away ({elapsed:?})");
        let expected: Vec<GrantKey> = if elapsed < Duration::from_secs(120) {
            vec![key("10.0.0.1/32"), key("10.0.0.2/32"), key("10.0.0.3/32")]
        } else {
            vec![key("10.0.0.2/32"), key("10.0.0.3/32")]
        };
        assert_eq!(granted(&h), expected, "at {elapsed:?}: only what was applied, less what ended");
        if elapsed >= OUTAGE {
            break elapsed;
        }
    };
    // Backoff doubling to 30 s: about 28 tries in ten minutes, not a storm.
    assert!((20..=40).contains(&polls), "{polls} tries in {elapsed:?}");

    // Meanwhile on the server .1 expired, .2 was revoked and .4 granted: the first answer.
    let left = 1800 - elapsed.as_secs();
    agent.answer(Ok(state(7, &[("10.0.0.3", left), ("10.0.0.4", 300)])));
    assert_eq!(agent.report().await.revision, 7);
    assert_eq!(granted(&h), vec![key("10.0.0.3/32"), key("10.0.0.4/32")], "revoked .2 closed, .4 opened");
    assert_eq!(h.counts(), (applied.0, applied.1 + 1), "caught up in one batch");
    assert_eq!(h.remaining(&key("10.0.0.4/32")), Some(Duration::from_secs(300)));
    assert_eq!(agent.poll().await.1, Some(7));
    agent.stop().await.expect("a clean stop");
}
