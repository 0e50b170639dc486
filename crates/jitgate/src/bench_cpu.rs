//! Where a benchmark's CPU time goes: the CPU time (user and system) each process involved has
//! used, read from `/proc`, so a stage's cost can be put on the replicas, on PostgreSQL or on
//! the benchmark's own simulated clients (all on the same cores).

use std::time::Duration;

/// Linux reports process CPU times in clock ticks of `USER_HZ`, which is 100 per second on
/// every architecture jitgate runs on (it is part of the user-space ABI, whatever the kernel's
/// own tick rate).
const USER_HZ: u64 = 100;

/// The CPU time process `pid` has used, or `None` when it cannot be read.
pub fn of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    ticks(&stat).map(|t| Duration::from_millis(t * 1000 / USER_HZ))
}

/// The CPU time this process has used.
pub fn own() -> Option<Duration> {
    of(std::process::id())
}

/// The CPU time all processes named `postgres` (the server and its backends) have used, as far
/// as they can be read: backends that ended meanwhile are not counted.
pub fn postgres() -> Duration {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Duration::ZERO };
    let mut total = 0;
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        if command(&stat) == Some("postgres") {
            total += ticks(&stat).unwrap_or(0);
        }
    }
    Duration::from_millis(total * 1000 / USER_HZ)
}

/// The command name of a `/proc/PID/stat` line (between the first `(` and the last `)`).
fn command(stat: &str) -> Option<&str> {
    Some(&stat[stat.find('(')? + 1..stat.rfind(')')?])
}

/// User plus system ticks of a `/proc/PID/stat` line: the 14th and 15th fields, counted after
/// the command name, which may itself hold spaces and parentheses.
fn ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_past_odd_command_names() {
        let line = "4242 (post gres) x) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 31 0 0 20 0 1 0 99 0 0";
        assert_eq!(command(line), Some("post gres) x"));
        assert_eq!(ticks(line), Some(281));
        assert_eq!(ticks("4242 (x) S 1 2"), None);
        assert_eq!(command("no command"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        assert!(own().is_some());
        assert_eq!(of(u32::MAX), None);
    }
}
