//! The portal's short-lived entries.

use super::*;

/// Entries are found by kind and key until they expire; a take removes; past the limit the
/// oldest of a kind go, other kinds untouched.
pub async fn ephemeral_entries_expire_and_are_taken_once(store: &dyn Store) {
    let t = |s: i64| now() + Duration::seconds(s);
    store.put_ephemeral("session", "k1", "one", t(0), t(60), 3).await.expect("put");
    store.put_ephemeral("sso", "k1", "other kind", t(0), t(60), 3).await.expect("put");
    assert_eq!(store.get_ephemeral("session", "k1", t(1)).await.expect("get").as_deref(), Some("one"));
    assert_eq!(store.get_ephemeral("session", "k1", t(60)).await.expect("get"), None, "expired at its end");
    assert_eq!(store.get_ephemeral("session", "nope", t(1)).await.expect("get"), None);
    // Replaced in place.
    store.put_ephemeral("session", "k1", "one again", t(2), t(60), 3).await.expect("put");
    assert_eq!(store.get_ephemeral("session", "k1", t(3)).await.expect("get").as_deref(), Some("one again"));
    // Taken once.
    assert_eq!(store.take_ephemeral("sso", "k1", t(4)).await.expect("take").as_deref(), Some("other kind"));
    assert_eq!(store.take_ephemeral("sso", "k1", t(4)).await.expect("take"), None, "taken once");
    store.put_ephemeral("sso", "late", "x", t(0), t(5), 3).await.expect("put");
    assert_eq!(store.take_ephemeral("sso", "late", t(5)).await.expect("take"), None, "expired: not given");
    assert_eq!(store.get_ephemeral("sso", "late", t(1)).await.expect("get"), None, "and gone");
    // The limit: the oldest of the kind go.
    for (i, key) in ["k2", "k3", "k4"].iter().enumerate() {
        store.put_ephemeral("session", key, key, t(10 + i as i64), t(600), 3).await.expect("put");
    }
    assert_eq!(store.get_ephemeral("session", "k1", t(20)).await.expect("get"), None, "the oldest went");
    for key in ["k2", "k3", "k4"] {
        assert_eq!(store.get_ephemeral("session", key, t(20)).await.expect("get").as_deref(), Some(key));
    }
}
