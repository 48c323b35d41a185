//! The system generations a scenario, or `labtest rebuild`/`rollback`, switches machines through.
//!
//! `nix-env --rollback` (what `nixos-rebuild switch --rollback` runs) goes to the next-lower
//! generation *number*, which is the generation that was current before only while nobody has
//! switched back and forth: once a run has rolled back from 3 to 2 and switches again (4), a
//! rollback lands on 3. Scenarios (and the lab's server, for `labtest rollback`) therefore remember, per machine, the generation numbers they
//! switched away from; a rollback returns to the last of them by number, and when the scenario
//! ends every machine goes back to the generation it started on, so the next scenario or file
//! sees the lab as booted.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use super::{Activation, GenerationError, Nix, SystemProfile};
use crate::vm::Machine;

/// Why a switch, a rollback or the return to the start generations did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// A bookkeeping step failed (reading or switching a generation): says nothing about the lab.
    #[error("{context}")]
    Step {
        /// What was being done, for the message.
        context: String,
        /// The generation operation's error.
        #[source]
        source: GenerationError,
    },
    /// A rollback with no switch of the machine to go back from.
    #[error(
        "rollback of {machine}: expected an earlier rebuild of it in this scenario to go back \
         from, saw none"
    )]
    NothingToRollBack {
        /// The machine.
        machine: String,
    },
    /// A machine's start generation did not activate cleanly: what follows would start on a
    /// broken lab. The lab misbehaved, unlike the other variants.
    #[error("{check}: {reason}")]
    StartGeneration {
        /// The check it is reported as.
        check: String,
        /// What activating it said.
        reason: String,
    },
    /// Another thread panicked while holding the switch history.
    #[error("switch history lock poisoned")]
    Poisoned,
}

impl SwitchError {
    fn step(context: impl Into<String>) -> impl FnOnce(GenerationError) -> Self {
        let context = context.into();
        move |source| SwitchError::Step { context, source }
    }
}

/// Per machine, the generation numbers switched away from, oldest first.
#[derive(Debug, Default)]
pub struct Switches {
    left: Mutex<BTreeMap<String, Vec<u32>>>,
}

impl Switches {
    /// Switches `machine` to `toplevel` after noting which generation it leaves.
    ///
    /// # Errors
    /// A bookkeeping step failing, as [`SystemProfile::switch_to`]; a failing activation is `Ok`.
    pub async fn switch_to(
        &self,
        profile: &SystemProfile,
        nix: &Nix,
        machine: &Machine,
        toplevel: &Path,
    ) -> Result<Activation, SwitchError> {
        let leaving = current(profile, machine).await?;
        let activation = profile
            .switch_to(nix, machine, toplevel)
            .await
            .map_err(SwitchError::step(format!("switching {}", machine.name())))?;
        if let Some(number) = leaving {
            self.stack(machine.name(), |s| s.push(number));
        }
        Ok(activation)
    }

    /// Switches `machine` back to the generation it was on before this scenario's last switch
    /// of it.
    ///
    /// # Errors
    /// [`SwitchError::NothingToRollBack`] when this scenario has not switched the machine (there is no
    /// "before" to return to), or a bookkeeping step failing.
    pub async fn roll_back(
        &self,
        profile: &SystemProfile,
        machine: &Machine,
    ) -> Result<Activation, SwitchError> {
        let Some(number) = self.stack(machine.name(), |s| s.last().copied()) else {
            return Err(SwitchError::NothingToRollBack {
                machine: machine.name().to_string(),
            });
        };
        let activation = switch_generation(profile, machine, number).await?;
        self.stack(machine.name(), |s| s.pop());
        Ok(activation)
    }

    /// Puts every machine this scenario switched back on the generation it started on, and says
    /// what it did (one line per machine). Called when a scenario ends, passed or not.
    ///
    /// # Errors
    /// [`SwitchError::StartGeneration`] when a machine's start generation does not activate cleanly: the
    /// next scenario would start on a broken lab.
    pub async fn return_to_start(
        &self,
        profile: &SystemProfile,
        machines: &[&Machine],
    ) -> Result<Vec<String>, SwitchError> {
        let starts: Vec<(String, u32)> = match self.left.lock() {
            Ok(left) => left
                .iter()
                .filter_map(|(m, s)| s.first().map(|n| (m.clone(), *n)))
                .collect(),
            Err(_) => return Err(SwitchError::Poisoned),
        };
        let mut done = Vec::new();
        for (name, number) in starts {
            let Some(machine) = machines.iter().find(|m| m.name() == name) else {
                continue;
            };
            if current(profile, machine).await? == Some(number) {
                done.push(format!("{name} is on its start generation {number}"));
            } else {
                let activation = switch_generation(profile, machine, number).await?;
                if !activation.succeeded() {
                    return Err(SwitchError::StartGeneration {
                        check: format!("{name} back on its start generation {number}"),
                        reason: format!(
                            "switch-to-configuration exited {}, expected 0: {}",
                            activation.status,
                            crate::wait::tail_chars(activation.stderr.trim(), 400)
                        ),
                    });
                }
                done.push(format!(
                    "{name} switched back to its start generation {number}"
                ));
            }
            self.stack(&name, Vec::clear);
        }
        Ok(done)
    }

    /// Whether a switch of `machine` made here can be rolled back ([`Switches::roll_back`]).
    pub fn has_switched(&self, machine: &str) -> bool {
        self.stack(machine, |s| !s.is_empty())
    }

    fn stack<T>(&self, machine: &str, f: impl FnOnce(&mut Vec<u32>) -> T) -> T {
        let mut left = self
            .left
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(left.entry(machine.to_string()).or_default())
    }
}

async fn current(profile: &SystemProfile, machine: &Machine) -> Result<Option<u32>, SwitchError> {
    profile
        .current_generation(machine)
        .await
        .map_err(SwitchError::step("reading the current generation"))
}

async fn switch_generation(
    profile: &SystemProfile,
    machine: &Machine,
    number: u32,
) -> Result<Activation, SwitchError> {
    profile
        .switch_generation(machine, number)
        .await
        .map_err(SwitchError::step(format!(
            "switching {} to generation {number}",
            machine.name()
        )))
}
