//! A running lab's state dir in the temp dir, and the removal of ones whose owner died.
use std::path::PathBuf;

/// A running lab's state dir (disk overlays, hub sockets, console logs until teardown) lives
/// in the temp dir under this prefix, with an [`OWNER_FILE`] naming the process that owns it.
pub(super) const STATE_DIR_PREFIX: &str = "labtest-";
pub(super) const OWNER_FILE: &str = "owner";

/// `<pid> <start time>`: the start time (field 22 of /proc/PID/stat) tells a live owner from a
/// later process that got the same pid.
pub(super) fn owner_stamp(pid: u32) -> String {
    format!("{pid} {}", process_start(pid).unwrap_or_default())
}

/// The start time of a live process; `None` for one that is gone or a zombie (killed, not yet
/// reaped: a SIGKILLed server whose parent is gone may stay one for as long as nothing reaps).
fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing paren.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?;
    if matches!(state, "Z" | "X") {
        return None;
    }
    fields.nth(18).map(str::to_string)
}

/// Removes the state dirs of labs whose owning process is gone (killed by SIGKILL, so its
/// teardown never ran; its QEMUs died with it). Returns what it removed. Dirs without an owner
/// file, or whose owner lives, are left alone.
pub fn remove_orphaned_state_dirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(STATE_DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let Ok(stamp) = std::fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        let owner_alive = stamp
            .split_once(' ')
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
            .is_some_and(|pid| owner_stamp(pid) == stamp);
        if !owner_alive && std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_state_dirs_of_dead_owners_are_removed() {
        let dead = tempfile::Builder::new()
            .prefix(STATE_DIR_PREFIX)
            .tempdir()
            .expect("temp dir");
        let live = tempfile::Builder::new()
            .prefix(STATE_DIR_PREFIX)
            .tempdir()
            .expect("temp dir");
        let unowned = tempfile::Builder::new()
            .prefix(STATE_DIR_PREFIX)
            .tempdir()
            .expect("temp dir");
        // Our pid with another start time: the pid was reused, its owner is gone.
        std::fs::write(
            dead.path().join(OWNER_FILE),
            format!("{} 1", std::process::id()),
        )
        .expect("write");
        std::fs::write(
            live.path().join(OWNER_FILE),
            owner_stamp(std::process::id()),
        )
        .expect("write");
        // A killed owner nobody has reaped yet is a zombie: gone all the same.
        let zombie = tempfile::Builder::new()
            .prefix(STATE_DIR_PREFIX)
            .tempdir()
            .expect("temp dir");
        let mut child = std::process::Command::new("sleep")
            .arg("0.1")
            .spawn()
            .expect("sleep");
        std::fs::write(zombie.path().join(OWNER_FILE), owner_stamp(child.id())).expect("write");
        std::thread::sleep(Duration::from_millis(500));
        let removed = remove_orphaned_state_dirs();
        let _ = child.wait();
        assert!(removed.contains(&dead.path().to_path_buf()), "{removed:?}");
        assert!(!dead.path().exists());
        assert!(!zombie.path().exists(), "a zombie owner counted as alive");
        assert!(live.path().exists());
        assert!(unowned.path().exists());
    }
}
