//! The control socket of a lab kept up between commands: one JSON request per connection, one
//! JSON reply. Small on purpose: every verb maps to one harness call.
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case")]
pub enum Request {
    Status,
    Exec {
        machine: String,
        command: String,
        timeout_secs: u64,
    },
    /// Put a fault on the lab, or end one (`labtest crash|freeze|thaw|start|partition|heal`).
    Fault {
        fault: harness::fault::Fault,
    },
    /// Build a machine's system (as the flake has it now, or a named generation), copy it in
    /// and switch to it (`labtest rebuild MACHINE`).
    Rebuild {
        machine: String,
        generation: Option<String>,
    },
    /// Back to the generation before (`labtest rollback MACHINE`).
    Rollback {
        machine: String,
    },
    /// Run scenarios on the served lab (`labtest run --attach`); the reply's text is the
    /// summary, its status the run's exit status. Paths are absolute.
    Run {
        scenarios: Vec<String>,
        scenario_files: Vec<std::path::PathBuf>,
        report_dir: std::path::PathBuf,
    },
    /// Save the running lab as a named snapshot (`labtest snapshot save NAME`).
    Snapshot {
        name: harness::snapshot::SnapshotName,
    },
    /// The latest CPU samples of every machine (`labtest top`); status 0 once there are any.
    Top,
    /// How to reach a machine's sshd (`labtest ssh`, `labtest journal`): the lab key let in,
    /// the host key pinned, sshd answering.
    Ssh {
        machine: String,
    },
    Down,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    pub error: Option<String>,
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub text: String,
    /// For [`Request::Ssh`].
    #[serde(default)]
    pub ssh: Option<harness::lab::SshAccess>,
}

impl Reply {
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }

    pub fn error(error: impl Into<String>) -> Self {
        Self {
            error: Some(error.into()),
            ..Self::default()
        }
    }
}

/// Sends one request and waits for the reply, bounded by `timeout`.
pub async fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Reply> {
    let exchange = async {
        let mut stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        stream.write_all(line.as_bytes()).await?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).await?;
        if reply.is_empty() {
            return Err(anyhow!(
                "the lab's server closed the connection without a reply"
            ));
        }
        Ok(serde_json::from_str::<Reply>(&reply)?)
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        anyhow!(
            "the lab's server at {} did not answer within {}s",
            socket.display(),
            timeout.as_secs()
        )
    })?
}
