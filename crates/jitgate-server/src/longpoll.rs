//! A cap on concurrent state long-polls per agent credential. A new long-poll past the cap
//! replaces the oldest one, which answers at once (200 with the state as it is, exactly as if
//! its wait had run out): a real agent holds one long-poll at a time, and one that lost its
//! connection simply polls again. A waiting long-poll is a future on the change channel and
//! holds no thread.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Per agent, its waiting long-polls, oldest first: an id and what tells it to answer.
type Waiting = HashMap<String, VecDeque<(u64, Arc<Notify>)>>;

/// The long-polls waiting, per agent.
#[derive(Debug)]
pub struct LongPolls {
    cap: usize,
    next: AtomicU64,
    waiting: Mutex<Waiting>,
}

/// One waiting long-poll; leaves the register when dropped.
#[derive(Debug)]
pub struct Ticket {
    polls: Arc<LongPolls>,
    agent: String,
    id: u64,
    replaced: Arc<Notify>,
}

impl LongPolls {
    /// At most `cap` long-polls per agent (0: no cap).
    pub fn new(cap: usize) -> Self {
        LongPolls { cap, next: AtomicU64::new(0), waiting: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a long-poll of `agent`, telling the oldest ones to answer when over the cap.
    pub fn enter(self: &Arc<Self>, agent: &str) -> Ticket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let replaced = Arc::new(Notify::new());
        let mut waiting = self.lock();
        let queue = waiting.entry(agent.to_owned()).or_default();
        if self.cap > 0 {
            while queue.len() >= self.cap {
                match queue.pop_front() {
                    // `notify_one` keeps the permit if the poll is not waiting at this instant.
                    Some((_, oldest)) => oldest.notify_one(),
                    None => break,
                }
            }
        }
        queue.push_back((id, replaced.clone()));
        Ticket { polls: self.clone(), agent: agent.to_owned(), id, replaced }
    }

    /// How many long-polls of `agent` are waiting.
    pub fn waiting(&self, agent: &str) -> usize {
        self.lock().get(agent).map_or(0, VecDeque::len)
    }

    /// How many agents have a long-poll waiting (the agents connected to this server).
    pub fn agents(&self) -> usize {
        self.lock().len()
    }
}

impl Ticket {
    /// Completes when a newer long-poll of the same agent has replaced this one.
    pub async fn replaced(&self) {
        self.replaced.notified().await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut waiting = self.polls.lock();
        if let Some(queue) = waiting.get_mut(&self.agent) {
            queue.retain(|(id, _)| *id != self.id);
            if queue.is_empty() {
                waiting.remove(&self.agent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn past_the_cap_the_oldest_poll_is_replaced() {
        let polls = Arc::new(LongPolls::new(2));
        let a = polls.enter("agent-1");
        let b = polls.enter("agent-1");
        let other = polls.enter("agent-2");
        assert_eq!(polls.waiting("agent-1"), 2);
        assert_eq!(polls.agents(), 2, "two agents, whatever their polls");
        let c = polls.enter("agent-1");
        assert_eq!(polls.waiting("agent-1"), 2);
        tokio::time::timeout(Duration::from_secs(5), a.replaced()).await.expect("the oldest is told to answer");
        for t in [&b, &c, &other] {
            assert!(tokio::time::timeout(Duration::from_millis(20), t.replaced()).await.is_err());
        }
        drop((a, b, c));
        assert_eq!(polls.waiting("agent-1"), 0);
        assert_eq!(polls.waiting("agent-2"), 1);
        assert_eq!(polls.agents(), 1);
        drop(other);
        assert!(polls.lock().is_empty(), "nothing is kept for agents without long-polls");
        assert_eq!(polls.agents(), 0);
    }

    #[tokio::test]
    async fn no_cap_means_none_is_replaced() {
        let polls = Arc::new(LongPolls::new(0));
        let tickets: Vec<Ticket> = (0..100).map(|_| polls.enter("a")).collect();
        assert_eq!(polls.waiting("a"), 100);
        assert!(tokio::time::timeout(Duration::from_millis(20), tickets[0].replaced()).await.is_err());
    }
}
