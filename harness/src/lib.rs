//! labtest's library. Layers, lowest first; a module only uses the ones above it in this list:
//!
//! * [`words`] - closed vocabularies of words as enums ([`words!`]), for the layers below.
//! * [`secs`] - durations as seconds in every JSON file, for the vocabularies and reports.
//! * [`utc`] - wall-clock times as UTC text (RFC 3339), std only.
//! * [`fault`] - the one fault vocabulary (crash, freeze, partition...), as values; injected by
//!   [`lab::Lab::inject`].
//! * [`events`] - the one vocabulary every layer reports through.
//! * [`wait`] - deadlines, poll intervals and conditions, shared by every wait.
//! * [`check`] - the one check runner: a wait reported as events (started, progress, passed or
//!   failed with what it last saw and the delay it measured).
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
//! * [`report`] - the live view, summary, JUnit, JSON and the artifacts folder, all fed by events.
//! * [`ready`] - the top: a lab built, booted or restored, joined and through the readiness gate,
//!   as the CLI, the scenarios and users' own tests get it ([`ready::ReadyLab`]).
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
