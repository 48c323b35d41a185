//! `nix build` with progress, out-links and failures as errors; system generations driven in a guest.
//!
//! Works with Debian's Nix 2.8 (single-user, no daemon) and current Nix: only flags both understand are
//! used. 2.8 has no `--print-out-paths`, so output paths come from `--json`, which both print alike.
//!
//! ```text
//! let nix = Nix::find()?.for_debian_single_user();          // fixture lab; a real Nix install: Nix::find()?
//! let paths = nix.build(".", &["vm"], &out, deadline, |p| show(p.done, p.expected, &p.running)).await?;
//! let profile = SystemProfile::default();                    // /nix/var/nix/profiles/system
//! let activation = profile.switch_to(&nix, &machine, &new_toplevel).await?;   // machine: impl Guest
//! let back = profile.rollback(&machine).await?;
//! ```
pub mod generation;
mod machine;
pub mod progress;
pub mod switches;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

pub use generation::{
    Activation, CurrentSystem, Generation, GenerationError, Guest, GuestError, GuestOutput,
    SystemProfile,
};
pub use progress::{BuildProgress, ProgressParser};
pub use switches::{SwitchError, Switches};

const EXPERIMENTAL: &str = "nix-command flakes";
/// How long Nix gets to stop its builders after SIGTERM before the group is killed outright.
const TERM_GRACE: Duration = Duration::from_secs(5);
const STDERR_TAIL_LINES: usize = 25;

/// Why a Nix command failed, with Nix's own diagnosis and where its full log is.
#[derive(Debug, thiserror::Error)]
pub enum NixError {
    /// `nix` (or another Nix program) is not on PATH.
    #[error("`{program}` was not found on PATH ({message}); install Nix (on Debian: apt-get install nix-bin) or put it on PATH")]
    NotInstalled {
        /// The program looked for.
        program: String,
        /// Why it was not found.
        message: String,
    },
    /// The flake did not evaluate.
    #[error("evaluating {installable} failed: {message}\n(full log: {})", log_path.display())]
    Evaluation {
        /// What was built (`<flake>#<attr>`).
        installable: String,
        /// Nix's error.
        message: String,
        /// The build's whole log.
        log_path: PathBuf,
    },
    /// A derivation failed to build.
    #[error("building {installable}: derivation {derivation} failed; its last log lines:\n{}\n(full log: {})", log_tail.join("\n"), log_path.display())]
    BuildFailed {
        /// What was built (`<flake>#<attr>`).
        installable: String,
        /// The derivation that failed.
        derivation: String,
        /// Its log's last lines.
        log_tail: Vec<String>,
        /// The build's whole log.
        log_path: PathBuf,
    },
    /// The build ran past its deadline.
    #[error("building {installable} did not finish within {:.0}s; still building: {}\n(full log: {})", timeout.as_secs_f64(), if still_building.is_empty() { "nothing (evaluating or copying)".to_owned() } else { still_building.join(", ") }, log_path.display())]
    Timeout {
        /// What was built (`<flake>#<attr>`).
        installable: String,
        /// The deadline.
        timeout: Duration,
        /// The derivations still building then.
        still_building: Vec<String>,
        /// The build's whole log.
        log_path: PathBuf,
    },
    /// Any other Nix command failed.
    #[error("`{command}` exited with {status}, expected success; stderr ends:\n{}\n(full log: {})", stderr_tail.join("\n"), log_path.display())]
    Other {
        /// The command.
        command: String,
        /// How it exited.
        status: String,
        /// Its stderr's last lines.
        stderr_tail: Vec<String>,
        /// Its whole log.
        log_path: PathBuf,
    },
    /// A Nix program could not be run, or its output read.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NixError {
    let context = context.into();
    move |source| NixError::Io { context, source }
}

/// The host's Nix: `nix` and `nix-store` found on PATH, plus settings every invocation gets.
#[derive(Debug, Clone)]
pub struct Nix {
    nix: PathBuf,
    nix_store: PathBuf,
    config: Vec<String>,
}

impl Nix {
    /// Finds `nix` and `nix-store` on PATH.
    ///
    /// # Errors
    /// [`NixError::NotInstalled`] naming the missing program and how to get it.
    pub fn find() -> Result<Self, NixError> {
        let find = |program: &str| {
            which::which(program).map_err(|e| NixError::NotInstalled {
                program: program.to_owned(),
                message: e.to_string(),
            })
        };
        Ok(Nix {
            nix: find("nix")?,
            nix_store: find("nix-store")?,
            config: Vec::new(),
        })
    }

    /// Adds one `nix.conf` line (e.g. `sandbox = false`) to every invocation, after the caller's own
    /// `NIX_CONFIG`, so it wins.
    pub fn with_config(mut self, line: &str) -> Self {
        self.config.push(line.to_owned());
        self
    }

    /// Settings for Debian's Nix 2.8 run as root without a daemon, as the fixture lab needs them:
    /// no substituters (offline), no `nixbld` group (Debian does not create it), and no sandbox
    /// (its `sandbox-paths` is empty, so `/bin/sh` would not exist for builders).
    pub fn for_debian_single_user(self) -> Self {
        self.with_config("substituters =")
            .with_config("build-users-group =")
            .with_config("sandbox = false")
    }

    /// The `nix` program this handle runs.
    pub fn nix_path(&self) -> &Path {
        &self.nix
    }

    /// A command for `program` (`nix`, `nix-store`, `nix-env`, ...) with this handle's settings.
    /// Nix 2.8 cannot start without `HOME`, so a missing one is set to the temp dir.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        let mut config = std::env::var_os("NIX_CONFIG").unwrap_or_default();
        for line in &self.config {
            if !config.is_empty() {
                config.push("\n");
            }
            config.push(line);
        }
        cmd.env("NIX_CONFIG", config);
        if std::env::var_os("HOME").is_none() {
            cmd.env("HOME", std::env::temp_dir());
        }
        cmd.kill_on_drop(true);
        cmd
    }

    /// `nix` with the experimental features flakes need; every `nix` invocation goes through here.
    pub fn nix_command(&self) -> Command {
        let mut cmd = self.command(&self.nix);
        cmd.args(["--extra-experimental-features", EXPERIMENTAL]);
        cmd
    }

    /// `nix-store` with this handle's settings.
    pub fn nix_store_command(&self) -> Command {
        self.command(&self.nix_store)
    }

    /// `nix --version`, e.g. `nix (Nix) 2.8.0`.
    pub async fn version(&self) -> Result<String, NixError> {
        let out = self
            .nix_command()
            .arg("--version")
            .output()
            .await
            .map_err(io(format!("running {} --version", self.nix.display())))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Builds `<flake_ref>#<attr>` for each attr, with out-links `<out_dir>/result-<attr>` (and
    /// `-<output>` for outputs other than `out`), and returns every output path in order.
    ///
    /// `progress` is called after every log line that changed the snapshot. The raw log of all
    /// attrs goes to `<out_dir>/nix-build.log`.
    ///
    /// # Caveats
    /// One `nix build` per attr, one after another: each gets its own out-link name and its own
    /// failure, at the price of evaluating the flake once per attr.
    ///
    /// # Errors
    /// [`NixError::Evaluation`], [`NixError::BuildFailed`] with the failing derivation's log tail,
    /// [`NixError::Timeout`] when `timeout` (for all attrs together) passes - the process group is
    /// stopped and the error lists what was still building - or [`NixError::Other`].
    pub async fn build(
        &self,
        flake_ref: &str,
        attrs: &[&str],
        out_dir: &Path,
        timeout: Duration,
        mut progress: impl FnMut(&BuildProgress),
    ) -> Result<Vec<PathBuf>, NixError> {
        let deadline = tokio::time::Instant::now() + timeout;
        tokio::fs::create_dir_all(out_dir)
            .await
            .map_err(io(format!("creating {}", out_dir.display())))?;
        let log_path = out_dir.join("nix-build.log");
        let mut log = tokio::fs::File::create(&log_path)
            .await
            .map_err(io(format!("creating {}", log_path.display())))?;
        let mut paths = Vec::new();
        for attr in attrs {
            let installable = format!("{flake_ref}#{attr}");
            let link = out_dir.join(format!("result-{}", attr.replace('/', "_")));
            let mut cmd = self.nix_command();
            cmd.arg("build")
                .args([
                    "--log-format",
                    "internal-json",
                    "-v",
                    "--json",
                    "--out-link",
                ])
                .arg(&link)
                .arg(&installable)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                // A group of its own, so a deadline can stop nix and anything it started.
                .process_group(0);
            let command = format!("nix build {installable}");
            let run = Run {
                installable: &installable,
                command: &command,
                log_path: &log_path,
                timeout,
                deadline,
            };
            paths.extend(run.go(cmd, attr, &mut log, &mut progress).await?);
        }
        Ok(paths)
    }
}

struct Run<'a> {
    installable: &'a str,
    command: &'a str,
    log_path: &'a Path,
    timeout: Duration,
    deadline: tokio::time::Instant,
}

impl Run<'_> {
    async fn go(
        &self,
        mut cmd: Command,
        attr: &str,
        log: &mut tokio::fs::File,
        progress: &mut impl FnMut(&BuildProgress),
    ) -> Result<Vec<PathBuf>, NixError> {
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NixError::NotInstalled {
                program: "nix".into(),
                message: e.to_string(),
            },
            _ => NixError::Io {
                context: format!("starting {}", self.command),
                source: e,
            },
        })?;
        let (Some(stderr), Some(mut stdout)) = (child.stderr.take(), child.stdout.take()) else {
            return Err(NixError::Io {
                context: format!("{}: no pipes", self.command),
                source: std::io::Error::other("stdio was not captured"),
            });
        };
        let stdout_task = tokio::spawn(async move {
            let mut buf = Vec::new();
            stdout.read_to_end(&mut buf).await.map(|_| buf)
        });
        let mut parser = ProgressParser::new(attr);
        let mut lines = BufReader::new(stderr);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = tokio::select! {
                read = lines.read_until(b'\n', &mut line) => read,
                _ = tokio::time::sleep_until(self.deadline) => {
                    stop_group(&mut child).await;
                    let _ = log.flush().await;
                    return Err(NixError::Timeout {
                        installable: self.installable.to_owned(),
                        timeout: self.timeout,
                        still_building: parser.progress().running.clone(),
                        log_path: self.log_path.to_owned(),
                    });
                }
            };
            match read {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(io(format!("reading stderr of {}", self.command))(e)),
            }
            log.write_all(&line)
                .await
                .map_err(io(format!("writing {}", self.log_path.display())))?;
            let text = String::from_utf8_lossy(&line);
            if parser.feed(text.trim_end_matches(['\n', '\r'])) {
                progress(parser.progress());
            }
        }
        log.flush()
            .await
            .map_err(io(format!("writing {}", self.log_path.display())))?;
        let status = tokio::select! {
            status = child.wait() => status.map_err(io(format!("waiting for {}", self.command)))?,
            _ = tokio::time::sleep_until(self.deadline) => {
                stop_group(&mut child).await;
                return Err(NixError::Timeout {
                    installable: self.installable.to_owned(),
                    timeout: self.timeout,
                    still_building: Vec::new(),
                    log_path: self.log_path.to_owned(),
                });
            }
        };
        let stdout = match stdout_task.await {
            Ok(Ok(buf)) => buf,
            Ok(Err(e)) => return Err(io(format!("reading stdout of {}", self.command))(e)),
            Err(e) => {
                return Err(io(format!("reading stdout of {}", self.command))(
                    std::io::Error::other(e.to_string()),
                ))
            }
        };
        if !status.success() {
            return Err(self.classify(&parser, status.to_string()));
        }
        self.out_paths(&stdout)
    }

    /// Turns a failed run into the most specific error its log supports.
    fn classify(&self, parser: &ProgressParser, status: String) -> NixError {
        let failed_drv = parser.errors().iter().find_map(|e| failed_derivation(e));
        if let Some(derivation) = failed_drv {
            return NixError::BuildFailed {
                installable: self.installable.to_owned(),
                log_tail: parser.log_tail(&derivation),
                derivation,
                log_path: self.log_path.to_owned(),
            };
        }
        // Errors before Nix started realising anything come from evaluation; later ones (store
        // permissions, a missing build group) are not the flake's fault.
        if !parser.errors().is_empty() && !parser.realise_started() {
            return NixError::Evaluation {
                installable: self.installable.to_owned(),
                message: parser.errors().join("\n"),
                log_path: self.log_path.to_owned(),
            };
        }
        let mut tail: Vec<String> = parser.plain_tail();
        tail.extend(parser.errors().iter().map(|e| format!("error: {e}")));
        let skip = tail.len().saturating_sub(STDERR_TAIL_LINES);
        NixError::Other {
            command: self.command.to_owned(),
            status,
            stderr_tail: tail.split_off(skip),
            log_path: self.log_path.to_owned(),
        }
    }

    /// Output paths from `nix build --json`: `[{"drvPath": .., "outputs": {"out": ..}}]`.
    fn out_paths(&self, stdout: &[u8]) -> Result<Vec<PathBuf>, NixError> {
        let parsed: serde_json::Value =
            serde_json::from_slice(stdout).map_err(|e| NixError::Other {
                command: self.command.to_owned(),
                status: "success".into(),
                stderr_tail: vec![format!(
                    "expected a JSON list of outputs on stdout, got {:?}: {e}",
                    String::from_utf8_lossy(stdout)
                )],
                log_path: self.log_path.to_owned(),
            })?;
        let mut paths = Vec::new();
        for built in parsed.as_array().into_iter().flatten() {
            let Some(outputs) = built.get("outputs").and_then(|o| o.as_object()) else {
                continue;
            };
            // "out" first: it is the one the plain out-link names.
            let mut names: Vec<&String> = outputs.keys().collect();
            names.sort_by_key(|n| (n.as_str() != "out", n.as_str()));
            paths.extend(
                names
                    .into_iter()
                    .filter_map(|n| outputs.get(n)?.as_str().map(PathBuf::from)),
            );
        }
        Ok(paths)
    }
}

/// The derivation a Nix error message blames, if it is a builder failure. Nix up to 2.2x says
/// "builder for '<drv>' failed with exit code N"; newer Nix says "Cannot build '<drv>'.\nReason:
/// builder failed ...". A dependency's failure ("Reason: 1 dependency failed") is skipped: the
/// leaf's own message names the derivation whose log matters.
fn failed_derivation(message: &str) -> Option<String> {
    let rest = message
        .split_once("builder for '")
        .or_else(|| {
            let (_, rest) = message.split_once("Cannot build '")?;
            (!rest.contains("dependency failed") && !rest.contains("dependencies failed"))
                .then_some(("", rest))
        })?
        .1;
    Some(rest.split_once('\'')?.0.to_owned())
}

/// Asks Nix to stop (SIGTERM lets it kill its builders, which run in process groups of their own),
/// then kills whatever is left of its group.
async fn stop_group(child: &mut Child) {
    let Some(pid) = child.id() else { return };
    let Ok(raw) = i32::try_from(pid) else { return };
    let group = ::nix::unistd::Pid::from_raw(raw);
    let _ = ::nix::sys::signal::killpg(group, ::nix::sys::signal::Signal::SIGTERM);
    if tokio::time::timeout(TERM_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = ::nix::sys::signal::killpg(group, ::nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::failed_derivation;

    #[test]
    fn finds_the_failed_derivation_in_old_and_new_messages() {
        assert_eq!(
            failed_derivation("builder for '/nix/store/a-x.drv' failed with exit code 3")
                .as_deref(),
            Some("/nix/store/a-x.drv")
        );
        assert_eq!(
            failed_derivation(
                "Cannot build '/nix/store/a-x.drv'.\nReason: builder failed with exit code 3."
            )
            .as_deref(),
            Some("/nix/store/a-x.drv")
        );
        assert_eq!(
            failed_derivation("Cannot build '/nix/store/b-y.drv'.\nReason: 1 dependency failed."),
            None
        );
        assert_eq!(
            failed_derivation("1 dependencies of derivation '/nix/store/b-y.drv' failed to build"),
            None
        );
    }
}
