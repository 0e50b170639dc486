//! Leases and the signal listener.

use super::*;

/// A lease is one holder's until it runs out or is released; names are independent; a
/// listener whose receiver is gone returns.
pub async fn leases_are_held_by_one_holder_at_a_time(store: &dyn Store) {
    let t = |s: i64| now() + Duration::seconds(s);
    assert!(store.try_lease("sweeper", "a", t(0), t(15)).await.expect("free: taken"));
    assert!(store.try_lease("sweeper", "a", t(5), t(20)).await.expect("renewed by its holder"));
    assert!(!store.try_lease("sweeper", "b", t(10), t(25)).await.expect("held by a until 20"));
    assert!(store.try_lease("retention", "b", t(10), t(25)).await.expect("another name is free"));
    assert!(!store.try_lease("sweeper", "b", t(19), t(34)).await.expect("still a's"));
    assert!(store.try_lease("sweeper", "b", t(20), t(35)).await.expect("run out: taken over"));
    assert!(!store.try_lease("sweeper", "a", t(21), t(36)).await.expect("now b's"));
    store.release_lease("sweeper", "a").await.expect("a release by a non-holder does nothing");
    assert!(!store.try_lease("sweeper", "a", t(22), t(37)).await.expect("still b's"));
    store.release_lease("sweeper", "b").await.expect("released");
    assert!(store.try_lease("sweeper", "a", t(22), t(37)).await.expect("released: free at once"));
    assert!(!store.try_lease("retention", "a", t(22), t(37)).await.expect("untouched by the other name"));

    let (tx, rx) = tokio::sync::mpsc::channel(1);
    drop(rx);
    tokio::time::timeout(std::time::Duration::from_secs(10), store.listen(tx))
        .await
        .expect("listen returns once nobody hears it");
}
