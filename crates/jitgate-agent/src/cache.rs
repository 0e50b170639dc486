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

/// This boot's id and the time since it began, in milliseconds (`CLOCK_BOOTTIME`, which
/// setting the wall clock does not move); `None` where `/proc` does not say.
pub(crate) fn boot_clock() -> Option<(String, u64)> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?.trim().to_owned();
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    Some((id, (secs * 1000.0) as u64))
}

/// How long ago a saved state was fetched: by the time since boot when it was saved in this
/// same boot (a wall clock set right, or wrong, meanwhile changes nothing), else by the wall
/// clock (after a reboot; a wall clock set back while the agent was down then lengthens what
/// is restored by as much, one set forward shortens it).
pub(crate) fn elapsed_ms(saved: (Option<&str>, Option<u64>, u64), boot: Option<(&str, u64)>, unix_ms: u64) -> u64 {
    let (saved_boot, saved_uptime, saved_unix) = saved;
    match (saved_boot, saved_uptime, boot) {
        (Some(id), Some(then), Some((now_id, now))) if id == now_id && now >= then => now - then,
        _ => unix_ms.saturating_sub(saved_unix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_elapsed_time_comes_from_the_boot_clock_within_a_boot_and_from_the_wall_clock_across() {
        // Same boot: the wall clock was set back an hour meanwhile; the boot clock says 5 s.
        assert_eq!(elapsed_ms((Some("b1"), Some(10_000), 4_000_000), Some(("b1", 15_000)), 400_000), 5_000);
        // Another boot (or a file from an older agent): the wall clock.
        assert_eq!(elapsed_ms((Some("b1"), Some(10_000), 1_000_000), Some(("b2", 500)), 1_007_000), 7_000);
        assert_eq!(elapsed_ms((None, None, 1_000_000), Some(("b1", 15_000)), 1_002_000), 2_000);
        // A wall clock behind the saved time: nothing has passed, as far as it can tell.
        assert_eq!(elapsed_ms((None, None, 1_000_000), None, 999_000), 0);
    }

    #[test]
    fn this_host_has_a_boot_clock() {
        let (id, ms) = boot_clock().expect("/proc/sys/kernel/random/boot_id and /proc/uptime");
        assert_eq!(id.len(), 36, "{id}");
        assert!(ms > 0);
    }

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
