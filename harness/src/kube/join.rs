//! Joining nodes: the master's token, piped into each node's join command.
//!
//! Labs say how in their spec: a command run on the master prints the token (NixOS:
//! `cat /var/lib/cfssl/apitoken.secret`), a command run on each node reads it on stdin (NixOS:
//! `nixos-kubernetes-node-join`). The guest channel runs commands with stdin from /dev/null, so
//! the token travels inside the command line as a quoted `printf` argument.
//!
//! # Caveats
//! The token is a credential: it never appears in errors, events or logs - errors name the join
//! command without the `printf` in front of it.
use std::fmt;
use std::time::{Duration, Instant};

use super::KubeError;
use crate::vm::channel::ansi_c_quote;
use crate::vm::Machine;
use crate::wait::tail_chars;

/// One node that did not join.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinFailure {
    /// The node's name.
    pub node: String,
    /// The join command's exit status; `None` when it never finished (deadline, lost channel).
    pub status: Option<i32>,
    /// The end of its stderr (or the channel error), which is where join tools say why.
    pub stderr: String,
    /// Its stdout, for what stderr does not say.
    pub stdout: String,
}

impl fmt::Display for JoinFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "{}: exited {status}, expected 0", self.node)?,
            None => write!(f, "{}: did not finish", self.node)?,
        }
        write!(f, "; stderr: {}", one_line_or_none(&self.stderr))?;
        if !self.stdout.trim().is_empty() {
            write!(f, "; stdout: {}", one_line_or_none(&self.stdout))?;
        }
        Ok(())
    }
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
/// node, all nodes at once, within `deadline` overall.
///
/// # Errors
/// [`KubeError::JoinToken`] when the token command fails or prints nothing;
/// [`KubeError::Join`] listing every node that failed with its status and stderr (the other
/// nodes did join).
///
/// # Usage
/// ```no_run
/// # async fn demo(master: &harness::vm::Machine, a: &harness::vm::Machine, b: &harness::vm::Machine)
/// # -> Result<(), harness::kube::KubeError> {
/// use std::time::Duration;
/// harness::kube::join_nodes(
///     master,
///     &[a, b],
///     "cat /var/lib/cfssl/apitoken.secret",
///     "nixos-kubernetes-node-join",
///     Duration::from_secs(300),
/// )
/// .await?;
/// # Ok(()) }
/// ```
pub async fn join_nodes(
    master: &Machine,
    nodes: &[&Machine],
    token_command: &str,
    join_command: &str,
    deadline: Duration,
) -> Result<(), KubeError> {
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
    let line = join_line(token, join_command);
    let remaining = deadline.saturating_sub(start.elapsed());
    let results = futures::future::join_all(nodes.iter().map(|node| {
        let line = &line;
        async move {
            match node.exec(line, remaining).await {
                Ok(out) if out.status == 0 => None,
                Ok(out) => Some(JoinFailure {
                    node: node.name().to_string(),
                    status: Some(out.status),
                    stderr: tail_chars(&out.stderr_str(), 1500),
                    stdout: tail_chars(&out.stdout_str(), 500),
                }),
                Err(e) => Some(JoinFailure {
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
                }),
            }
        }
    }))
    .await;
    let failures: Vec<JoinFailure> = results.into_iter().flatten().collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(KubeError::Join {
            nodes: nodes.len(),
            failures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_node_and_its_stderr() {
        let failures = vec![
            JoinFailure {
                node: "limiting-factor".into(),
                status: Some(1),
                stderr: "certmgr: connection refused\nretrying".into(),
                stdout: String::new(),
            },
            JoinFailure {
                node: "congenital-optimist".into(),
                status: None,
                stderr: "timed out".into(),
                stdout: String::new(),
            },
        ];
        let err = KubeError::Join { nodes: 2, failures };
        assert_eq!(
            err.to_string(),
            "2 of 2 node(s) failed to join:\n  limiting-factor: exited 1, expected 0; stderr: \
             certmgr: connection refused | retrying\n  congenital-optimist: did not finish; \
             stderr: timed out"
        );
    }
}
