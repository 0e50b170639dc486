//! Unit tests of the store's read path.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_reads_waits_for_slots_instead_of_taking_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("jitgate.db"), jitgate_store::secrets::Keyring::generate().expect("key"))
            .expect("open"),
    );
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let reads: Vec<_> = (0..64)
        .map(|_| {
            let (store, running, most) = (store.clone(), running.clone(), most.clone());
            tokio::spawn(async move {
                store
                    .read(move |c| {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        running.fetch_sub(1, Ordering::SeqCst);
                        c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                    })
                    .await
            })
        })
        .collect();
    for r in reads {
        assert_eq!(r.await.expect("join").expect("read"), 1);
    }
    let most = most.load(Ordering::SeqCst);
    assert!(most <= READ_CONCURRENCY, "{most} reads ran at once");
    assert!(most >= 2, "reads still run in parallel");
}
