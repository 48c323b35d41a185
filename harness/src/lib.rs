//! labtest's library. Layers, lowest first; a module only uses the ones above it in this list:
//!
//! * [`words`] - closed vocabularies of words as enums ([`words!`]), for the layers below.
//! * [`secs`] - durations as seconds in every JSON file, for the vocabularies and reports.
//! * [`utc`] - wall-clock times as UTC text (RFC 3339), std only.
//! * [`error`] - how an error and its causes are shown ([`error::Chain`]), std only.
//! * [`fault`] - the one fault vocabulary (crash, freeze, partition...), as values; injected by
//!   [`lab::Lab::inject`].
//! * [`events`] - the one vocabulary every layer reports through.
//! * [`wait`] - deadlines, poll intervals and conditions, shared by every wait.
//! * [`check`] - the one check runner: a wait reported as events (started, progress, passed or
//!   failed with what it last saw and the delay it measured).
//! * [`artifacts`] - a run's artifacts folder, where every layer (the scenarios too) leaves
//!   evidence, each file announced as an event.
//! * [`vm`] - one QEMU machine: its run script, QMP, the guest channel, faults.
//! * [`net`] - the lab's private L2 hub (partitions per pair) and host port picks.
//! * [`nix`] - `nix build` with progress, out-links, new system generations and the ones a run
//!   switched machines through (to roll back and to return to).
//! * [`kube`] - a client from the lab's kubeconfig, node joins, the readiness gate, object waits.
//! * [`sampler`] - where the CPU goes: each machine's QEMU, its guest and the host, sampled
//!   through a lab's life as events.
//! * [`snapshot`] - whole-lab snapshots in the cache: keyed, written atomically, listed, removed.
//! * [`lab`] - a lab spec plus its machines and network, booted (or restored from a snapshot)
//!   and torn down together.
//! * `scenarios`, the crate, stands here: it uses every layer above, never one below.
//! * [`report`] - the live view, summary, JUnit, JSON and HTML in the artifacts folder, all fed
//!   by events.
//! * [`ready`] - the top: a lab built, booted or restored, joined and through the readiness gate,
//!   as the CLI, the scenarios and users' own tests get it ([`ready::ReadyLab`]).
pub mod artifacts;
pub mod check;
pub mod error;
pub mod events;
pub mod fault;
pub mod kube;
pub mod lab;
pub mod net;
pub mod nix;
pub mod ready;
pub mod report;
pub mod sampler;
pub mod secs;
pub mod snapshot;
pub mod utc;
pub mod vm;
pub mod wait;
pub mod words;

/// The layer list above is the rule; this keeps the code to it (fault once reached up into vm
/// for a constant, and nothing failed).
#[cfg(test)]
mod layers {
    use std::path::Path;

    /// The modules in the order the crate docs list them, lowest first.
    fn order() -> Vec<String> {
        include_str!("lib.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! * [`"))
            .filter_map(|l| l.split('`').next())
            .map(str::to_string)
            .collect()
    }

    fn sources(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                sources(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }

    #[test]
    fn no_module_uses_one_listed_after_it() {
        let order = order();
        assert!(order.len() > 10, "the layer list was not found: {order:?}");
        let rank = |name: &str| order.iter().position(|m| m == name);
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut violations = Vec::new();
        for file in files {
            let relative = file.strip_prefix(&src).expect("under src");
            let top = relative
                .iter()
                .next()
                .expect("a component")
                .to_string_lossy();
            let Some(own) = rank(top.trim_end_matches(".rs")) else {
                continue;
            };
            let text = std::fs::read_to_string(&file).expect("read");
            for (n, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for (at, _) in line.match_indices("crate::") {
                    let used: String = line[at + 7..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if rank(&used).is_some_and(|r| r > own) {
                        violations.push(format!(
                            "{}:{}: {}",
                            relative.display(),
                            n + 1,
                            line.trim()
                        ));
                    }
                }
            }
        }
        // The scenarios crate stands between lab and report.
        let scenarios = src.join("../../scenarios/src");
        let mut files = Vec::new();
        sources(&scenarios, &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read");
            for (n, line) in text.lines().enumerate() {
                let code = !line.trim_start().starts_with("//");
                if code && (line.contains("harness::report") || line.contains("harness::ready")) {
                    let relative = file.strip_prefix(&scenarios).expect("under src");
                    violations.push(format!(
                        "scenarios/src/{}:{}: {}",
                        relative.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
        assert!(
            violations.is_empty(),
            "lower layers use higher ones:\n{}",
            violations.join("\n")
        );
    }
}
