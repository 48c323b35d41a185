//! System generations in a guest: switch to a new toplevel, roll back, read what is active.
//!
//! The steps are those of `nixos-rebuild switch` and deploy tools, done by hand because a direct-boot
//! `system.build.vm` has no system profile and the guest cannot build (no nixpkgs):
//! 1. make the toplevel's closure valid in the guest: the paths the guest's store already has
//!    (its store image, or the host's store over 9p) are registered with `nix-store --dump-db` on
//!    the host and `--load-db` in the guest (a path is only usable by nix-env once the database
//!    knows it); the paths it lacks are copied in as deploy tools do, `nix-store --export` on the
//!    host and `--import` in the guest, dependencies first;
//! 2. `nix-env -p PROFILE --set TOPLEVEL` - a new generation;
//! 3. `TOPLEVEL/bin/switch-to-configuration switch`.
//!
//! Rollback is `nixos-rebuild switch --rollback`: `nix-env --rollback -p PROFILE`, then the profile's
//! own `bin/switch-to-configuration switch`.
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Nix;

/// What a command did in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestOutput {
    /// Its exit status.
    pub status: i32,
    /// What it printed.
    pub stdout: Vec<u8>,
    /// What it printed on stderr.
    pub stderr: Vec<u8>,
}

/// Why a [`Guest`] could not run a command.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The command did not finish in time.
    #[error("{machine}: command {command:?} did not finish within {:.1}s", timeout.as_secs_f64())]
    Timeout {
        /// The machine.
        machine: String,
        /// The command.
        command: String,
        /// Its deadline.
        timeout: Duration,
    },
    /// The way into the guest failed.
    #[error("{machine}: the guest channel failed: {message}")]
    Channel {
        /// The machine.
        machine: String,
        /// What went wrong.
        message: String,
    },
}

/// A machine the harness can run root commands in. The VM layer implements it for its machines.
///
/// The methods return `Send` futures so scenarios can drive several guests from spawned tasks;
/// an implementation may still write `async fn`. Not object safe: use generics (or wrap in an enum).
pub trait Guest: Sync {
    /// The machine's name in the lab.
    fn name(&self) -> &str;

    /// Runs `command` with bash as root; a non-zero exit is a normal [`GuestOutput`], not an error.
    fn exec(
        &self,
        command: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<GuestOutput, GuestError>> + Send;

    /// Writes `data` to `guest_path`, replacing it.
    fn copy_in(
        &self,
        data: &[u8],
        guest_path: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), GuestError>> + Send;
}

/// Why a generation could not be built into, listed, switched to or rolled back to.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// A step in the guest exited non-zero.
    #[error("{machine}: `{command}` exited with {status}, expected 0; stderr: {stderr}")]
    Step {
        /// The machine.
        machine: String,
        /// The step's command.
        command: String,
        /// Its exit status.
        status: i32,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A step could not be run in the guest.
    #[error("{machine}: `{command}`")]
    Guest {
        /// The machine.
        machine: String,
        /// The step's command.
        command: String,
        /// Why it could not run.
        #[source]
        source: GuestError,
    },
    /// A `nix-store` command on the host failed.
    #[error("on the host, `{command}` failed: {message}")]
    Host {
        /// The command.
        command: String,
        /// What went wrong.
        message: String,
    },
    /// A step's output was not what Nix prints.
    #[error("{machine}: could not read `{command}` output {output:?}: {message}")]
    Parse {
        /// The machine.
        machine: String,
        /// The step's command.
        command: String,
        /// What it printed.
        output: String,
        /// What could not be read in it.
        message: String,
    },
}

/// The outcome of running a generation's `switch-to-configuration switch`. A failing activation is
/// a result: a scenario may expect a generation to break a service and then roll back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    /// The machine.
    pub machine: String,
    /// The toplevel that was activated.
    pub toplevel: String,
    /// `switch-to-configuration`'s exit status.
    pub status: i32,
    /// What it printed.
    pub stdout: String,
    /// What it printed on stderr (failed units are named there).
    pub stderr: String,
}

impl Activation {
    /// Whether the activation exited 0 (no unit failed).
    pub fn succeeded(&self) -> bool {
        self.status == 0
    }
}

/// What the guest runs now and what its profile points to; they differ after a failed activation
/// or when booted from a run script (which never touches the profile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentSystem {
    /// `readlink -f PROFILE`, `None` while the profile has no generation.
    pub profile: Option<String>,
    /// `readlink -f /run/current-system`.
    pub running: Option<String>,
}

/// One line of `nix-env --list-generations`, plus the store path it points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Its number in the profile.
    pub number: u32,
    /// As Nix prints it: `YYYY-MM-DD HH:MM:SS` in the guest's local time.
    pub created: String,
    /// Whether the profile points to it now.
    pub current: bool,
    /// The system's store path, when the link could be read.
    pub toplevel: Option<String>,
}

/// A system profile in a guest, with the deadlines its steps get.
#[derive(Debug, Clone)]
pub struct SystemProfile {
    /// Default `/nix/var/nix/profiles/system`.
    pub profile: String,
    /// Default `/run/current-system`, the link `switch-to-configuration` maintains.
    pub current_system: String,
    /// Deadline for each bookkeeping step (copying the DB dump, load-db, nix-env, readlink).
    pub step_timeout: Duration,
    /// Deadline for `switch-to-configuration` (restarting units can take a while).
    pub activation_timeout: Duration,
}

impl Default for SystemProfile {
    fn default() -> Self {
        SystemProfile {
            profile: "/nix/var/nix/profiles/system".into(),
            current_system: "/run/current-system".into(),
            step_timeout: Duration::from_secs(120),
            activation_timeout: Duration::from_secs(600),
        }
    }
}

static DUMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl SystemProfile {
    /// A profile at another path (tests drive a real profile in a temp dir).
    pub fn at(profile: &str, current_system: &str) -> Self {
        SystemProfile {
            profile: profile.into(),
            current_system: current_system.into(),
            ..SystemProfile::default()
        }
    }

    /// Registers `toplevel`'s closure in the guest, makes it the profile's new generation and
    /// activates it.
    ///
    /// # Errors
    /// Any bookkeeping step failing ([`GenerationError::Step`], with command and stderr), the host's
    /// `nix-store` failing, or the guest not answering in time. A failing activation is `Ok` with a
    /// non-zero [`Activation::status`].
    pub async fn switch_to<G: Guest>(
        &self,
        nix: &Nix,
        guest: &G,
        toplevel: &Path,
    ) -> Result<Activation, GenerationError> {
        let toplevel = toplevel.to_string_lossy().into_owned();
        let closure = host_nix_store(nix, &["-qR", &toplevel]).await?;
        let closure: Vec<String> = String::from_utf8_lossy(&closure)
            .lines()
            .map(str::to_owned)
            .collect();
        let missing = self.missing_in_guest(guest, &closure).await?;
        let present: Vec<String> = closure
            .iter()
            .filter(|p| !missing.contains(p))
            .cloned()
            .collect();
        // Register what the guest has (its store image holds more than its database knows),
        // then import the rest, dependencies first (-qR's order), as deploy tools copy a closure.
        for (paths, on_host, in_guest) in [
            (&present, "--dump-db", "nix-store --load-db"),
            (&missing, "--export", "nix-store --import >/dev/null"),
        ] {
            if paths.is_empty() {
                continue;
            }
            let mut args = vec![on_host.to_string()];
            args.extend(paths.iter().cloned());
            let data = host_nix_store(nix, &args).await?;
            self.load_in_guest(guest, &data, in_guest).await?;
        }
        let t = sh_quote(&toplevel);
        self.step(
            guest,
            &format!("nix-env -p {} --set {t}", sh_quote(&self.profile)),
        )
        .await?;
        self.activate(
            guest,
            &format!("{t}/bin/switch-to-configuration switch"),
            &toplevel,
        )
        .await
    }

    /// The store paths of `paths` that the guest's store lacks.
    async fn missing_in_guest<G: Guest>(
        &self,
        guest: &G,
        paths: &[String],
    ) -> Result<Vec<String>, GenerationError> {
        let list = self.remote_file("paths");
        // One path per line, each ending in a newline: `read` drops a last line without one.
        let text: String = paths.iter().map(|p| format!("{p}\n")).collect();
        self.copy(guest, text.as_bytes(), &list).await?;
        let l = sh_quote(&list);
        let out = self
            .step(
                guest,
                &format!(
                    "while IFS= read -r p; do [ -e \"$p\" ] || echo \"$p\"; done <{l}; s=$?; rm -f {l}; exit $s"
                ),
            )
            .await?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// Copies `data` into the guest and feeds it to `command` on stdin.
    async fn load_in_guest<G: Guest>(
        &self,
        guest: &G,
        data: &[u8],
        command: &str,
    ) -> Result<(), GenerationError> {
        let remote = self.remote_file("in");
        self.copy(guest, data, &remote).await?;
        let r = sh_quote(&remote);
        self.step(guest, &format!("{command} <{r}; s=$?; rm -f {r}; exit $s"))
            .await
            .map(|_| ())
    }

    async fn copy<G: Guest>(
        &self,
        guest: &G,
        data: &[u8],
        remote: &str,
    ) -> Result<(), GenerationError> {
        guest
            .copy_in(data, remote, self.step_timeout)
            .await
            .map_err(|source| GenerationError::Guest {
                machine: guest.name().into(),
                command: format!("copy {} bytes to {remote}", data.len()),
                source,
            })
    }

    fn remote_file(&self, what: &str) -> String {
        format!(
            "/tmp/labtest-closure-{}-{}.{what}",
            std::process::id(),
            DUMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Makes the previous generation current and activates it.
    ///
    /// # Errors
    /// [`GenerationError::Step`] when there is no previous generation (nix-env says so in stderr).
    pub async fn rollback<G: Guest>(&self, guest: &G) -> Result<Activation, GenerationError> {
        let p = sh_quote(&self.profile);
        self.step(guest, &format!("nix-env --rollback -p {p}"))
            .await?;
        self.activate_profile(guest).await
    }

    /// Makes generation `number` of the profile current and activates it
    /// (`nix-env --switch-generation N`, then the profile's `switch-to-configuration switch`).
    /// This is how to go back to a *particular* generation: [`SystemProfile::rollback`] goes to
    /// the next-lower number, which is another one as soon as a run has switched back and forth.
    ///
    /// # Errors
    /// [`GenerationError::Step`] when the profile has no such generation (nix-env's stderr).
    pub async fn switch_generation<G: Guest>(
        &self,
        guest: &G,
        number: u32,
    ) -> Result<Activation, GenerationError> {
        let p = sh_quote(&self.profile);
        self.step(
            guest,
            &format!("nix-env -p {p} --switch-generation {number}"),
        )
        .await?;
        self.activate_profile(guest).await
    }

    /// The number of the profile's current generation; `None` while it has none.
    ///
    /// # Errors
    /// As [`SystemProfile::list_generations`].
    pub async fn current_generation<G: Guest>(
        &self,
        guest: &G,
    ) -> Result<Option<u32>, GenerationError> {
        let generations = self.listed(guest).await?;
        Ok(generations.iter().find(|g| g.current).map(|g| g.number))
    }

    /// What the profile points to and what is running.
    pub async fn current<G: Guest>(&self, guest: &G) -> Result<CurrentSystem, GenerationError> {
        Ok(CurrentSystem {
            profile: self.readlink(guest, &self.profile).await?,
            running: self.readlink(guest, &self.current_system).await?,
        })
    }

    /// The profile's generations, oldest first; empty when the profile does not exist yet.
    pub async fn list_generations<G: Guest>(
        &self,
        guest: &G,
    ) -> Result<Vec<Generation>, GenerationError> {
        let mut generations = self.listed(guest).await?;
        for g in &mut generations {
            let link = format!("{}-{}-link", self.profile, g.number);
            g.toplevel = self.readlink(guest, &link).await?;
        }
        Ok(generations)
    }

    /// Runs the profile's own `switch-to-configuration switch`.
    async fn activate_profile<G: Guest>(&self, guest: &G) -> Result<Activation, GenerationError> {
        let toplevel = self
            .readlink(guest, &self.profile)
            .await?
            .unwrap_or_default();
        let p = sh_quote(&self.profile);
        self.activate(
            guest,
            &format!("{p}/bin/switch-to-configuration switch"),
            &toplevel,
        )
        .await
    }

    /// `nix-env --list-generations`, parsed; the toplevels are not read.
    async fn listed<G: Guest>(&self, guest: &G) -> Result<Vec<Generation>, GenerationError> {
        let p = sh_quote(&self.profile);
        let command = format!("nix-env -p {p} --list-generations");
        let out = self.step(guest, &command).await?;
        parse_generations(&out).map_err(|message| GenerationError::Parse {
            machine: guest.name().into(),
            command,
            output: out.clone(),
            message,
        })
    }

    async fn readlink<G: Guest>(
        &self,
        guest: &G,
        path: &str,
    ) -> Result<Option<String>, GenerationError> {
        // `|| true`: a missing link is an answer (no generation yet), not a failure.
        let out = self
            .step(guest, &format!("readlink -f {} || true", sh_quote(path)))
            .await?;
        // `readlink -f` of a missing last component prints the path itself (busybox has no -e).
        let target = out.trim();
        Ok((!target.is_empty() && target != path).then(|| target.to_owned()))
    }

    async fn activate<G: Guest>(
        &self,
        guest: &G,
        command: &str,
        toplevel: &str,
    ) -> Result<Activation, GenerationError> {
        let out = guest
            .exec(command, self.activation_timeout)
            .await
            .map_err(|source| GenerationError::Guest {
                machine: guest.name().into(),
                command: command.into(),
                source,
            })?;
        Ok(Activation {
            machine: guest.name().into(),
            toplevel: toplevel.into(),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs a bookkeeping command that must succeed; returns its stdout.
    async fn step<G: Guest>(&self, guest: &G, command: &str) -> Result<String, GenerationError> {
        let out = guest
            .exec(command, self.step_timeout)
            .await
            .map_err(|source| GenerationError::Guest {
                machine: guest.name().into(),
                command: command.into(),
                source,
            })?;
        if out.status != 0 {
            return Err(GenerationError::Step {
                machine: guest.name().into(),
                command: command.into(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `nix-store ARGS` on the host; its stdout. Argument lists name whole closures, so errors
/// name the first argument and how many paths followed.
async fn host_nix_store<S: AsRef<std::ffi::OsStr>>(
    nix: &Nix,
    args: &[S],
) -> Result<Vec<u8>, GenerationError> {
    let what = match args {
        [] => "nix-store".to_string(),
        [first, rest @ ..] => format!(
            "nix-store {} <{} path(s)>",
            first.as_ref().to_string_lossy(),
            rest.len()
        ),
    };
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        nix.nix_store_command().args(args).output(),
    )
    .await
    .map_err(|_| GenerationError::Host {
        command: what.clone(),
        message: "no answer within 600s".into(),
    })?
    .map_err(|e| GenerationError::Host {
        command: what.clone(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(GenerationError::Host {
            command: what,
            message: format!(
                "exit {}, stderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out.stdout)
}

/// Parses `nix-env --list-generations`: `   2   2024-11-26 16:20:00   (current)`.
pub fn parse_generations(output: &str) -> Result<Vec<Generation>, String> {
    let mut generations = Vec::new();
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let number = words
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("expected a generation number at the start of {line:?}"))?;
        let rest: Vec<&str> = words.collect();
        let current = rest.last() == Some(&"(current)");
        let date_words = if current {
            &rest[..rest.len() - 1]
        } else {
            &rest[..]
        };
        generations.push(Generation {
            number,
            created: date_words.join(" "),
            current,
            toplevel: None,
        });
    }
    Ok(generations)
}

pub use crate::vm::channel::sh_quote;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_generations() {
        let out = "   1   2024-11-26 16:20:00   \n   2   2024-11-26 16:21:07   (current)\n";
        let g = parse_generations(out).expect("parses");
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].number, g[0].current), (1, false));
        assert_eq!((g[1].number, g[1].current), (2, true));
        assert_eq!(g[1].created, "2024-11-26 16:21:07");
        assert!(parse_generations("garbage here").is_err());
    }

    #[test]
    fn quotes_for_sh() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }
}
