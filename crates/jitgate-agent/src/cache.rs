//! The agent's copy of its last applied state (`state.json`), written off the open path: the
//! loop hands each applied state to a thread of its own, which writes only the newest one
//! (atomically: a temporary file, fsync, rename). Neither the report to the server nor the next
//! long-poll waits for the disk; the copy is only read at the next start, before the server
//! answers, and the server's answer replaces it then anyway.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Writes the states handed to it, newest first, on a thread named `jg-agent-cache`.
pub(crate) struct CacheWriter {
    tx: Option<mpsc::Sender<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

impl CacheWriter {
    pub(crate) fn start(path: PathBuf) -> CacheWriter {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let thread = std::thread::Builder::new()
            .name("jg-agent-cache".into())
            .spawn(move || {
                while let Ok(mut data) = rx.recv() {
                    // Only the newest matters: skip what a later state replaced meanwhile.
                    while let Ok(newer) = rx.try_recv() {
                        data = newer;
                    }
                    if let Err(e) = crate::write_private(&path, &data) {
                        tracing::warn!(error = %e, "could not save the applied state");
                    }
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "no thread for saving the applied state; saving in line"))
            .ok();
        CacheWriter { tx: thread.is_some().then_some(tx), thread }
    }

    /// Hands `data` to the writer (or writes it at once when there is no writer thread).
    pub(crate) fn save(&self, data: Vec<u8>, path: &std::path::Path) {
        let unsent = match &self.tx {
            Some(tx) => tx.send(data).err().map(|e| e.0),
            None => Some(data),
        };
        if let Some(data) = unsent {
            if let Err(e) = crate::write_private(path, &data) {
                tracing::warn!(error = %e, "could not save the applied state");
            }
        }
    }
}

impl Drop for CacheWriter {
    /// Waits until the newest state handed over is on disk.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_state_is_on_disk_once_the_writer_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let w = CacheWriter::start(path.clone());
        for i in 0..50 {
            w.save(format!("{{\"n\":{i}}}").into_bytes(), &path);
        }
        drop(w);
        assert_eq!(std::fs::read_to_string(&path).expect("written"), "{\"n\":49}");
        assert!(!path.with_extension("tmp").exists(), "no temporary file left");
    }
}
