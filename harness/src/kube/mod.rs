//! The kube layer: a client from the lab's admin kubeconfig, node joins, the readiness gate and
//! bounded waits on Kubernetes objects.
//!
//! It sits below [`crate::lab`] and takes plain parameters (a [`crate::vm::Machine`], paths,
//! names) rather than lab types, so the same code runs against a lab's guests and against a
//! control plane on the host (the fast test tier).
//!
//! * [`access`] - fetch the admin kubeconfig from the master, point it at the host port forward,
//!   write it for `labtest kubectl`, build a [`::kube::Client`]; the server version for gating
//!   newer APIs.
//! * [`join`] - hand the master's join token to every node's join command.
//! * [`gate`] - the readiness gate: ordered named checks, each with its own deadline and poll
//!   interval, reported through [`crate::events`].
//! * [`conditions`] - [`wait_for`] and ready-made conditions (plain functions behind
//!   [`crate::wait::Condition`], as in kube-runtime's `wait` module).
//!
//! # Usage
//! ```no_run
//! # async fn demo(master: &harness::vm::Machine) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use harness::events::Events;
//! use harness::kube::{conditions, gate, KubeAccess, ReadinessGate};
//! use harness::wait::Wait;
//! use k8s_openapi::api::core::v1::Node;
//!
//! let access = KubeAccess::from_master(
//!     master,
//!     "/etc/kubernetes/cluster-admin.kubeconfig",
//!     443,
//!     Some("grey-area"),
//!     "/tmp/lab/kubeconfig".as_ref(),
//!     Duration::from_secs(600), // certmgr writes the certificates after boot
//! )
//! .await?;
//! let gate = ReadinessGate::new(["grey-area", "congenital-optimist"], "labtest/workload:1");
//! gate.run(access.client(), &Events::discard(), gate::no_evidence).await?;
//! let nodes = kube::Api::<Node>::all(access.client().clone());
//! let wait = Wait::new("grey-area Ready", Duration::from_secs(60), Duration::from_secs(1));
//! harness::kube::wait_for(&nodes, "grey-area", conditions::node_ready, &wait).await?;
//! # Ok(()) }
//! ```
pub mod access;
pub mod conditions;
pub mod gate;
pub mod join;
pub mod manifest;

use std::path::PathBuf;

pub use access::{apiserver_version, KubeAccess, ServerVersion};
pub use conditions::{wait_for, Summary};
pub use gate::{Budget, GateBudgets, GateError, GateReport, ReadinessGate};
pub use join::{join_nodes, JoinFailure, Joined};

use crate::vm::VmError;
use crate::wait::WaitError;

/// What went wrong in the kube layer. Messages say what was expected, what was seen, and where
/// the evidence is.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The admin kubeconfig could not be read from the master.
    #[error("{machine}: could not read the admin kubeconfig {path}")]
    FetchKubeconfig {
        /// The master.
        machine: String,
        /// The kubeconfig's path in the guest.
        path: String,
        /// Why the read failed.
        source: Box<VmError>,
    },
    /// The kubeconfig does not say what a client needs (a server, a user, credentials).
    #[error("kubeconfig from {origin} is unusable: expected {expected}, saw {seen}")]
    BadKubeconfig {
        /// Where it came from.
        origin: String,
        /// What it should hold.
        expected: String,
        /// What it held.
        seen: String,
    },
    /// The apiserver's port has no host forward, so the harness cannot reach it.
    #[error(
        "{machine} forwards no host port to the apiserver's guest port {port} \
         (forwards: {forwards}); expected the lab to forward it"
    )]
    NoForward {
        /// The master.
        machine: String,
        /// The apiserver's port in the guest.
        port: u16,
        /// The forwards it has.
        forwards: String,
    },
    /// A file (the kubeconfig written for the host) could not be read or written.
    #[error("{context} {path}")]
    Io {
        /// What was being done.
        context: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// kube-rs refused the kubeconfig.
    #[error("could not build a Kubernetes client from {origin}")]
    Client {
        /// Where the kubeconfig came from.
        origin: String,
        /// kube-rs's error.
        source: Box<::kube::Error>,
    },
    /// An API call failed.
    #[error("{what}")]
    Api {
        /// The call, as a person would say it.
        what: String,
        /// kube-rs's error.
        source: Box<::kube::Error>,
    },
    /// The apiserver is older than what was asked of it.
    #[error("{what} needs Kubernetes >= {needs}; the apiserver is {seen}")]
    Unsupported {
        /// What was asked.
        what: String,
        /// The oldest version that has it.
        needs: String,
        /// The apiserver's version.
        seen: String,
    },
    /// The master's join token command failed.
    #[error("{machine}: join token command `{command}` failed")]
    JoinToken {
        /// The master.
        machine: String,
        /// The command (`join_token_command` in lab.toml).
        command: String,
        /// Why it failed.
        source: Box<VmError>,
    },
    /// Nodes did not join the cluster.
    #[error("{} of {} node(s) failed to join:\n{}", failures.len(), nodes, join::describe(failures))]
    Join {
        /// How many nodes were to join.
        nodes: usize,
        /// The ones that did not, each with why.
        failures: Vec<JoinFailure>,
    },
    /// A wait on the cluster ended without its value.
    #[error(transparent)]
    Wait(#[from] WaitError),
    /// The readiness gate did not pass.
    #[error(transparent)]
    Gate(#[from] Box<GateError>),
}

impl KubeError {
    pub(crate) fn api(what: impl Into<String>, source: ::kube::Error) -> Self {
        KubeError::Api {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

/// A short, one-line form of a client error for progress lines (the full error is long and
/// repeats the request).
pub(crate) fn brief(error: &::kube::Error) -> String {
    match error {
        ::kube::Error::Api(status) => {
            let message = status.message.trim();
            format!("HTTP {} {}: {}", status.code, status.reason, message)
        }
        // The top level alone says e.g. "client error (Connect)"; the cause ("Connection
        // refused", a certificate name mismatch) is down the source chain.
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !text.contains(&cause_text) {
                    text.push_str(": ");
                    text.push_str(&cause_text);
                }
                source = cause.source();
            }
            crate::wait::tail_chars(&text, 300)
        }
    }
}

/// HTTP status of an API error, if the server answered at all.
pub(crate) fn status_code(error: &::kube::Error) -> Option<u16> {
    match error {
        ::kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
