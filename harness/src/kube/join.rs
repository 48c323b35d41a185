//! Joining nodes: the master's token, piped into each node's join command.
//!
//! Labs say how in their spec: a command run on the master prints the token (NixOS:
//! `cat /var/lib/cfssl/apitoken.secret`), a command run on each node reads it on stdin (NixOS:
//! `nixos-kubernetes-node-join`). The guest channel runs commands with stdin from /dev/null, so
//! the token travels inside the command line as a quoted `printf` argument.
//!
//! A join that fails is run again until it succeeds, for at most [`JOIN_RETRY_WINDOW`] after its
//! first failure (and never past the deadline), as nixpkgs' own
//! multi-node Kubernetes tests do (`machine2.wait_until_succeeds("cat /tmp/shared/apitoken.secret
//! | nixos-kubernetes-node-join")`, nixos/tests/kubernetes/{dns,rbac}.nix): on a fresh node
//! `nixos-kubernetes-node-join` restarts certmgr under `set -e`
//! (nixos/modules/services/cluster/kubernetes/pki.nix, NixOS/nixpkgs
//! 0490065f6ac60793bfb12e110bd6506aaca0e9f5), and that restart fails while
//! `kube-certmgr-bootstrap` has not yet fetched ca.pem from the master's cfssl. Every join
//! command a lab names must therefore be idempotent (nixpkgs' is: it rewrites the token file and
//! restarts the same units).
//!
//! # Caveats
//! The token is a credential: it never appears in errors, events or logs - errors name the join
//! command without the `printf` in front of it.
use std::fmt;
use std::time::{Duration, Instant};

use super::KubeError;
use crate::nix::{Guest, GuestOutput};
use crate::vm::channel::ansi_c_quote;
use crate::vm::Machine;
use crate::wait::tail_chars;

/// The pause between two attempts of one node's join. nixpkgs' `wait_until_succeeds` retries
/// every second for up to 900 s; a join attempt costs a certmgr restart, so a few seconds apart.
pub const JOIN_RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// How long a node's join keeps being retried after its first failure. What it waits for is
/// kube-certmgr-bootstrap fetching ca.pem, which pki.nix restarts every 10 s (`RestartSec`)
/// once the master's cfssl answers - and the token the join gets is made by cfssl's preStart,
/// so cfssl is starting by then. Two minutes is a dozen of those restarts; a join that fails
/// for longer fails for a reason of its own, and the run should say so without waiting out
/// the whole join deadline.
pub const JOIN_RETRY_WINDOW: Duration = Duration::from_secs(120);

/// One node that did not join.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinFailure {
    /// The node's name.
    pub node: String,
    /// The last attempt's exit status; `None` when it never finished (deadline, lost channel).
    pub status: Option<i32>,
    /// The end of the last attempt's stderr (or the channel error), which is where join tools
    /// say why.
    pub stderr: String,
    /// Its stdout, for what stderr does not say.
    pub stdout: String,
    /// How many times the join ran before the deadline.
    pub attempts: u32,
}

impl fmt::Display for JoinFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (node, attempt) = (&self.node, self.attempts);
        match self.status {
            Some(status) => write!(f, "{node}: attempt {attempt} exited {status}, expected 0")?,
            None => write!(f, "{node}: attempt {attempt} did not finish")?,
        }
        write!(f, "; stderr: {}", one_line_or_none(&self.stderr))?;
        if !self.stdout.trim().is_empty() {
            write!(f, "; stdout: {}", one_line_or_none(&self.stdout))?;
        }
        Ok(())
    }
}

/// A node that joined, and on which attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    /// The node's machine name.
    pub node: String,
    /// Which attempt joined it (1: the first).
    pub attempts: u32,
    /// The first failed attempt, said the way [`JoinFailure`] says it, when there was one.
    pub first_failure: Option<String>,
}

fn one_line_or_none(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        "(empty)".into()
    } else {
        text.replace('\n', " | ")
    }
}

pub(crate) fn describe(failures: &[JoinFailure]) -> String {
    failures
        .iter()
        .map(|f| format!("  {f}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The command run on a node: the token on the join command's stdin, as one line ending in a
/// newline - what `cat` of the token file gives. The newline matters: nixpkgs'
/// `nixos-kubernetes-node-join` runs under `set -e` and starts with `read -r token`, and bash's
/// `read` returns 1 at end of input without one, so a bare token makes it exit 1 with nothing
/// on stderr. The join command runs in a subshell so that all of it reads the pipe, not only its
/// first command (`a; b` would pipe into `a` alone), and on lines of its own so that a trailing
/// comment cannot swallow the `)`.
///
/// ```
/// let c = harness::kube::join::join_line("ab'c", "nixos-kubernetes-node-join");
/// assert_eq!(c, "printf '%s\\n' $'ab\\'c' | (\nnixos-kubernetes-node-join\n)");
/// ```
pub fn join_line(token: &str, join_command: &str) -> String {
    format!(
        "printf '%s\\n' {} | (\n{join_command}\n)",
        ansi_c_quote(token)
    )
}

/// Runs `token_command` on `master` and pipes its stdout (trimmed) into `join_command` on every
/// node, all nodes at once, each retried every [`JOIN_RETRY_INTERVAL`] until it exits 0 (for at
/// most [`JOIN_RETRY_WINDOW`] after its first failure), within `deadline` overall.
///
/// # Errors
/// [`KubeError::JoinToken`] when the token command fails or prints nothing;
/// [`KubeError::Join`] listing every node that never joined with its last attempt's status and
/// stderr (the other nodes did join).
///
/// # Usage
/// ```no_run
/// # async fn demo(master: &harness::vm::Machine, a: &harness::vm::Machine, b: &harness::vm::Machine)
/// # -> Result<(), harness::kube::KubeError> {
/// use std::time::Duration;
/// let joined = harness::kube::join_nodes(
///     master,
///     &[a, b],
///     "cat /var/lib/cfssl/apitoken.secret",
///     "nixos-kubernetes-node-join",
///     Duration::from_secs(300),
/// )
/// .await?;
/// for j in joined {
///     println!("{} joined on attempt {}", j.node, j.attempts);
/// }
/// # Ok(()) }
/// ```
pub async fn join_nodes(
    master: &Machine,
    nodes: &[&Machine],
    token_command: &str,
    join_command: &str,
    deadline: Duration,
) -> Result<Vec<Joined>, KubeError> {
    let start = Instant::now();
    let token_error = |source| KubeError::JoinToken {
        machine: master.name().to_string(),
        command: token_command.to_string(),
        source: Box::new(source),
    };
    let token = master
        .succeed_within(token_command, deadline)
        .await
        .map_err(token_error)?;
    let token = token.trim();
    if token.is_empty() {
        return Err(token_error(crate::vm::VmError::State {
            machine: master.name().to_string(),
            message: "expected a token on stdout, saw nothing".into(),
        }));
    }
    let until = start + deadline;
    let results = futures::future::join_all(
        nodes
            .iter()
            .map(|node| join_node(*node, token, join_command, until, RETRY)),
    )
    .await;
    let (mut joined, mut failures) = (Vec::new(), Vec::new());
    for result in results {
        match result {
            Ok(j) => joined.push(j),
            Err(f) => failures.push(f),
        }
    }
    if failures.is_empty() {
        Ok(joined)
    } else {
        Err(KubeError::Join {
            nodes: nodes.len(),
            failures,
        })
    }
}

/// How a failed join is retried: every `interval`, for at most `window` after the first failure.
#[derive(Debug, Clone, Copy)]
struct Retry {
    interval: Duration,
    window: Duration,
}

const RETRY: Retry = Retry {
    interval: JOIN_RETRY_INTERVAL,
    window: JOIN_RETRY_WINDOW,
};

/// One node's join, run again after each failure as `retry` says, never past `until`; the error
/// is the last attempt's.
async fn join_node<G: Guest>(
    node: &G,
    token: &str,
    join_command: &str,
    until: Instant,
    retry: Retry,
) -> Result<Joined, JoinFailure> {
    let line = join_line(token, join_command);
    let mut first_failure = None;
    let mut stop_retrying = until;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let remaining = until.saturating_duration_since(Instant::now());
        let failure = match node.exec(&line, remaining).await {
            Ok(out) if out.status == 0 => {
                return Ok(Joined {
                    node: node.name().to_string(),
                    attempts,
                    first_failure,
                })
            }
            Ok(out) => failed_attempt(node.name(), &out, attempts),
            Err(e) => JoinFailure {
                node: node.name().to_string(),
                status: None,
                // The channel error quotes the command, token included.
                stderr: tail_chars(
                    &crate::error::Chain(&e)
                        .to_string()
                        .replace(&ansi_c_quote(token), "<token>")
                        .replace(token, "<token>"),
                    1500,
                ),
                stdout: String::new(),
                attempts,
            },
        };
        if first_failure.is_none() {
            first_failure = Some(failure.to_string());
            stop_retrying = until.min(Instant::now() + retry.window);
        }
        if Instant::now() + retry.interval >= stop_retrying {
            return Err(failure);
        }
        tokio::time::sleep(retry.interval).await;
    }
}

fn failed_attempt(node: &str, out: &GuestOutput, attempts: u32) -> JoinFailure {
    JoinFailure {
        node: node.to_string(),
        status: Some(out.status),
        stderr: tail_chars(&String::from_utf8_lossy(&out.stderr), 1500),
        stdout: tail_chars(&String::from_utf8_lossy(&out.stdout), 500),
        attempts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::GuestError;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A node whose join fails its first `failures` attempts the way nixpkgs' does while certmgr
    /// lacks ca.pem (`systemctl restart certmgr` failing under `set -e`), then succeeds.
    struct FlakyNode {
        failures: u32,
        calls: AtomicU32,
    }

    impl Guest for FlakyNode {
        fn name(&self) -> &str {
            "limiting-factor"
        }

        async fn exec(&self, command: &str, _timeout: Duration) -> Result<GuestOutput, GuestError> {
            assert!(
                command.ends_with("(\nnixos-kubernetes-node-join\n)"),
                "{command}"
            );
            let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(if call <= self.failures {
                GuestOutput {
                    status: 1,
                    stdout: Vec::new(),
                    stderr: b"Restarting certmgr...\nJob for certmgr.service failed.".to_vec(),
                }
            } else {
                GuestOutput {
                    status: 0,
                    stdout: b"Node joined succesfully".to_vec(),
                    stderr: Vec::new(),
                }
            })
        }

        async fn copy_in(&self, _: &[u8], _: &str, _: Duration) -> Result<(), GuestError> {
            unreachable!("a join copies nothing")
        }
    }

    fn node(failures: u32) -> FlakyNode {
        FlakyNode {
            failures,
            calls: AtomicU32::new(0),
        }
    }

    #[tokio::test]
    async fn a_join_that_fails_first_is_run_again_until_it_succeeds() {
        let n = node(2);
        let until = Instant::now() + Duration::from_secs(10);
        let joined = join_node(
            &n,
            "0f1e",
            "nixos-kubernetes-node-join",
            until,
            Retry {
                interval: Duration::from_millis(1),
                window: Duration::from_secs(10),
            },
        )
        .await
        .expect("joins on the third attempt");
        assert_eq!(joined.attempts, 3);
        let first = joined.first_failure.expect("the first attempt failed");
        assert!(
            first.contains("exited 1") && first.contains("certmgr.service failed"),
            "{first}"
        );
    }

    #[tokio::test]
    async fn a_join_that_never_succeeds_stops_at_the_deadline_with_its_last_attempt() {
        let n = node(u32::MAX);
        let started = Instant::now();
        let failure = join_node(
            &n,
            "0f1e",
            "nixos-kubernetes-node-join",
            started + Duration::from_millis(300),
            Retry {
                interval: Duration::from_millis(50),
                window: Duration::from_secs(10),
            },
        )
        .await
        .expect_err("never joins");
        assert!(started.elapsed() < Duration::from_secs(2));
        let calls = n.calls.load(Ordering::SeqCst);
        assert!(calls >= 2, "retried: {calls} attempt(s)");
        assert_eq!(failure.attempts, calls);
        assert_eq!(failure.status, Some(1));
        assert!(
            failure.stderr.contains("certmgr.service failed"),
            "{failure}"
        );
    }

    #[tokio::test]
    async fn a_join_that_keeps_failing_stops_at_the_end_of_its_retry_window() {
        let n = node(u32::MAX);
        let started = Instant::now();
        let failure = join_node(
            &n,
            "0f1e",
            "nixos-kubernetes-node-join",
            started + Duration::from_secs(60),
            Retry {
                interval: Duration::from_millis(50),
                window: Duration::from_millis(300),
            },
        )
        .await
        .expect_err("never joins");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "retried past its window: {:?}",
            started.elapsed()
        );
        assert!(failure.attempts >= 2, "{failure}");
    }

    #[test]
    fn failures_name_the_node_and_its_stderr() {
        let failures = vec![
            JoinFailure {
                node: "limiting-factor".into(),
                status: Some(1),
                stderr: "certmgr: connection refused\nretrying".into(),
                stdout: String::new(),
                attempts: 12,
            },
            JoinFailure {
                node: "congenital-optimist".into(),
                status: None,
                stderr: "timed out".into(),
                stdout: String::new(),
                attempts: 1,
            },
        ];
        let err = KubeError::Join { nodes: 2, failures };
        assert_eq!(
            err.to_string(),
            "2 of 2 node(s) failed to join:\n  limiting-factor: attempt 12 exited 1, expected 0; \
             stderr: certmgr: connection refused | retrying\n  congenital-optimist: attempt 1 \
             did not finish; stderr: timed out"
        );
    }
}
