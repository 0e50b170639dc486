//! What a store tells about its commits, for the server's metrics: the writer reports each
//! committed transaction (how many changes it carried, how many audit records it appended, how
//! long its commit took). A store without an observer pays one atomic load per commit.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Told of every transaction a store's writer commits. Called on the writer's own thread or
/// task after the commit: it must be cheap (atomics), and never block.
pub trait CommitObserver: Send + Sync + 'static {
    /// A transaction of `changes` changes (the group-commit batch; refused changes kept with
    /// their audit record count, changes rolled back alone do not) committed and is durable; it
    /// appended `audit_records` audit records, and its commit took `latency` (for SQLite: the
    /// `COMMIT` and the fsync of the log that made it durable; for PostgreSQL: the `COMMIT`).
    fn committed(&self, changes: usize, audit_records: usize, latency: Duration);
}

/// Where a store's writer finds its observer: set once, after the store is opened (the first
/// observer stays), shared by the store and its writer.
#[derive(Clone, Default)]
pub struct Observer(Arc<OnceLock<Arc<dyn CommitObserver>>>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer").field("set", &self.0.get().is_some()).finish()
    }
}

impl Observer {
    /// Installs `observer`; false when one was installed before (it stays).
    pub fn set(&self, observer: Arc<dyn CommitObserver>) -> bool {
        self.0.set(observer).is_ok()
    }

    /// Tells the observer, if there is one, of a committed transaction.
    pub fn committed(&self, changes: usize, audit_records: usize, latency: Duration) {
        if let Some(o) = self.0.get() {
            o.committed(changes, audit_records, latency);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Count(AtomicUsize, AtomicUsize);

    impl CommitObserver for Count {
        fn committed(&self, changes: usize, audit_records: usize, _latency: Duration) {
            self.0.fetch_add(changes, Ordering::Relaxed);
            self.1.fetch_add(audit_records, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_first_observer_hears_every_commit() {
        let observer = Observer::default();
        observer.committed(3, 3, Duration::ZERO); // nobody listens yet: nothing happens
        let first = Arc::new(Count::default());
        assert!(observer.set(first.clone()));
        assert!(!observer.set(Arc::new(Count::default())), "the first one stays");
        observer.clone().committed(2, 5, Duration::from_millis(1));
        assert_eq!((first.0.load(Ordering::Relaxed), first.1.load(Ordering::Relaxed)), (2, 5));
    }
}
