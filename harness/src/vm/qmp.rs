//! A small QMP client: one connection per machine, kept for the machine's life, since QEMU serves
//! only one QMP client at a time (a second connection blocks until the first closes).
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The QMP socket could not be connected.
    #[error("could not connect to QMP at {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// QEMU said something that is not QMP, or closed the socket.
    #[error("QMP at {path}: {message}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// QEMU answered a command with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QMP's error class (`GenericError`).
        class: String,
        /// QMP's description.
        desc: String,
    },
    /// QEMU did not answer in time.
    #[error("QMP command {command} got no answer within {:.1}s (QEMU at {path} is not responding)", timeout.as_secs_f64())]
    Timeout {
        /// The command.
        command: String,
        /// The socket.
        path: PathBuf,
        /// How long the harness waited.
        timeout: Duration,
    },
}

/// A connection to one QEMU's QMP socket, past the capabilities handshake.
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// Asynchronous events (SHUTDOWN, STOP, RESUME...) seen while waiting for replies.
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects and negotiates capabilities.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let (read, writer) = stream.into_split();
        let mut qmp = Self {
            path: path.to_path_buf(),
            reader: BufReader::new(read),
            writer,
            events: Vec::new(),
        };
        let greeting = tokio::time::timeout(timeout, qmp.read_message())
            .await
            .map_err(|_| qmp.timeout_error("greeting", timeout))??;
        if greeting.get("QMP").is_none() {
            return Err(qmp.protocol(format!("expected a QMP greeting, got {greeting}")));
        }
        qmp.execute("qmp_capabilities", None, timeout).await?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        let exchange = async {
            self.writer
                .write_all(line.as_bytes())
                .await
                .map_err(|e| self.protocol(format!("write failed: {e}")))?;
            loop {
                let message = self.read_message().await?;
                if message.get("event").is_some() {
                    self.events.push(message);
                    continue;
                }
                if let Some(value) = message.get("return") {
                    return Ok(value.clone());
                }
                if let Some(error) = message.get("error") {
                    return Err(QmpError::Command {
                        command: command.to_string(),
                        class: error["class"].as_str().unwrap_or("?").to_string(),
                        desc: error["desc"].as_str().unwrap_or("?").to_string(),
                    });
                }
                return Err(self.protocol(format!("unexpected reply {message}")));
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(self.timeout_error(command, timeout)),
        }
    }

    /// `query-status`'s `status` field: "running", "paused", "shutdown", ...
    pub async fn status(&mut self, timeout: Duration) -> Result<String, QmpError> {
        let value = self.execute("query-status", None, timeout).await?;
        match value["status"].as_str() {
            // QEMU leaves a machine saved while stopped in "postmigrate", and a `stop` does not
            // change it: its CPUs are paused all the same until a `cont`.
            Some("postmigrate") => Ok("paused".to_string()),
            Some(status) => Ok(status.to_string()),
            None => Err(self.protocol(format!("query-status without a status: {value}"))),
        }
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(|e| self.protocol(format!("read failed: {e}")))?;
        if n == 0 {
            return Err(self.protocol("QEMU closed the QMP connection".into()));
        }
        serde_json::from_str(&line).map_err(|e| self.protocol(format!("bad JSON {line:?}: {e}")))
    }

    fn protocol(&self, message: String) -> QmpError {
        QmpError::Protocol {
            path: self.path.clone(),
            message,
        }
    }

    fn timeout_error(&self, command: &str, timeout: Duration) -> QmpError {
        QmpError::Timeout {
            command: command.to_string(),
            path: self.path.clone(),
            timeout,
        }
    }
}
