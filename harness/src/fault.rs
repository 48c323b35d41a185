//! The one fault vocabulary: every fault the harness can put on a lab, as a value.
//!
//! Scenario files parse into it, the CLI's server and the built-in scenarios dispatch it through
//! [`crate::lab::Lab::inject`] (which is where a machine actually gets crashed, frozen or cut
//! off), and events carry it typed, so the reports know which machines a fault touched without
//! parsing strings. It depends on nothing else in the crate but [`crate::secs`], so events can
//! use it.
//!
//! # Usage
//! ```
//! use harness::fault::Fault;
//!
//! let cut = Fault::Partition { a: "grey-area".into(), b: "limiting-factor".into() };
//! assert_eq!(cut.to_string(), "partition grey-area limiting-factor");
//! assert_eq!(cut.undo(), Some(Fault::Heal { a: "grey-area".into(), b: "limiting-factor".into() }));
//! let machines = ["grey-area".to_string(), "limiting-factor".to_string()];
//! assert!(cut.check(&machines).is_ok());
//! let nonsense = Fault::Partition { a: "grey-area".into(), b: "grey-area".into() };
//! assert!(nonsense.check(&machines).unwrap_err().contains("two different machines"));
//! ```
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// From QEMU start to the guest channel answering, when nobody says otherwise: a machine, a
/// lab, a fault's start and a scenario file's start all use it. Twice the slowest cold boot of
/// the fixture lab measured on the 2-core TCG CI host (135 s for three guests at once).
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// A fault, or the undoing of one. Machine names are the lab's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "kebab-case")]
pub enum Fault {
    /// Power loss: QEMU quits at once, nothing in the guest gets to run.
    Crash {
        /// The machine, by its name in the lab.
        machine: String,
    },
    /// Pause the CPUs (QMP `stop`).
    Freeze {
        /// The machine, by its name in the lab.
        machine: String,
    },
    /// Resume after `freeze` (QMP `cont`).
    Thaw {
        /// The machine, by its name in the lab.
        machine: String,
    },
    /// Graceful power-off, waiting up to `timeout` for QEMU to exit.
    Shutdown {
        /// The machine, by its name in the lab.
        machine: String,
        /// How long QEMU may take to exit.
        #[serde(with = "crate::secs")]
        timeout: Duration,
    },
    /// Power a crashed or shut-down machine on, waiting up to `timeout` for its guest.
    Start {
        /// The machine, by its name in the lab.
        machine: String,
        /// How long its guest may take to answer.
        #[serde(with = "crate::secs")]
        timeout: Duration,
    },
    /// Reboot through systemd, waiting up to `timeout` for the new boot to answer.
    Reboot {
        /// The machine, by its name in the lab.
        machine: String,
        /// How long the new boot may take to answer.
        #[serde(with = "crate::secs")]
        timeout: Duration,
    },
    /// The lab NIC loses carrier (QMP `set_link`): the guest sees it.
    LinkDown {
        /// The machine, by its name in the lab.
        machine: String,
    },
    /// The lab NIC gets its carrier back: the end of `link-down`.
    LinkUp {
        /// The machine, by its name in the lab.
        machine: String,
    },
    /// The hub drops traffic between two machines, both ways.
    Partition {
        /// One machine of the pair.
        a: String,
        /// The other machine of the pair.
        b: String,
    },
    /// The hub passes traffic between two machines again: the end of `partition`.
    Heal {
        /// One machine of the pair.
        a: String,
        /// The other machine of the pair.
        b: String,
    },
    /// The hub drops all of a machine's traffic; its link stays up, as with a dead switch port.
    Isolate {
        /// The machine, by its name in the lab.
        machine: String,
    },
    /// The hub passes a machine's traffic again: the end of `isolate`.
    Rejoin {
        /// The machine, by its name in the lab.
        machine: String,
    },
    /// `systemctl stop UNIT` in the guest.
    StopUnit {
        /// The machine, by its name in the lab.
        machine: String,
        /// The systemd unit (`kubelet.service`).
        unit: String,
    },
    /// `systemctl start UNIT` in the guest: the end of `stop-unit`.
    StartUnit {
        /// The machine, by its name in the lab.
        machine: String,
        /// The systemd unit (`kubelet.service`).
        unit: String,
    },
}

crate::words! {
    /// Which fault, without its arguments: what a scenario file writes after `fault =`.
    pub enum FaultKind {
        Crash = "crash",
        Freeze = "freeze",
        Thaw = "thaw",
        Shutdown = "shutdown",
        Start = "start",
        Reboot = "reboot",
        LinkDown = "link-down",
        LinkUp = "link-up",
        Partition = "partition",
        Heal = "heal",
        Isolate = "isolate",
        Rejoin = "rejoin",
        StopUnit = "stop-unit",
        StartUnit = "start-unit",
    }
}

impl Fault {
    /// Which fault this is, without its arguments.
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Crash { .. } => FaultKind::Crash,
            Fault::Freeze { .. } => FaultKind::Freeze,
            Fault::Thaw { .. } => FaultKind::Thaw,
            Fault::Shutdown { .. } => FaultKind::Shutdown,
            Fault::Start { .. } => FaultKind::Start,
            Fault::Reboot { .. } => FaultKind::Reboot,
            Fault::LinkDown { .. } => FaultKind::LinkDown,
            Fault::LinkUp { .. } => FaultKind::LinkUp,
            Fault::Partition { .. } => FaultKind::Partition,
            Fault::Heal { .. } => FaultKind::Heal,
            Fault::Isolate { .. } => FaultKind::Isolate,
            Fault::Rejoin { .. } => FaultKind::Rejoin,
            Fault::StopUnit { .. } => FaultKind::StopUnit,
            Fault::StartUnit { .. } => FaultKind::StartUnit,
        }
    }

    /// The name scenario files and events use (`crash`, `link-down`, `stop-unit`...).
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The machines it touches: one, or the pair of a partition.
    pub fn machines(&self) -> Vec<&str> {
        match self {
            Fault::Partition { a, b } | Fault::Heal { a, b } => vec![a, b],
            Fault::Crash { machine }
            | Fault::Freeze { machine }
            | Fault::Thaw { machine }
            | Fault::Shutdown { machine, .. }
            | Fault::Start { machine, .. }
            | Fault::Reboot { machine, .. }
            | Fault::LinkDown { machine }
            | Fault::LinkUp { machine }
            | Fault::Isolate { machine }
            | Fault::Rejoin { machine }
            | Fault::StopUnit { machine, .. }
            | Fault::StartUnit { machine, .. } => vec![machine],
        }
    }

    /// The fault that ends this one (a crash ends with a start, a partition with a heal);
    /// `None` for the faults that end others or end by themselves (a reboot).
    pub fn undo(&self) -> Option<Fault> {
        let machine = |m: &String| m.clone();
        Some(match self {
            Fault::Crash { machine: m } | Fault::Shutdown { machine: m, .. } => Fault::Start {
                machine: machine(m),
                timeout: DEFAULT_BOOT_TIMEOUT,
            },
            Fault::Freeze { machine: m } => Fault::Thaw {
                machine: machine(m),
            },
            Fault::LinkDown { machine: m } => Fault::LinkUp {
                machine: machine(m),
            },
            Fault::Partition { a, b } => Fault::Heal {
                a: a.clone(),
                b: b.clone(),
            },
            Fault::Isolate { machine: m } => Fault::Rejoin {
                machine: machine(m),
            },
            Fault::StopUnit { machine: m, unit } => Fault::StartUnit {
                machine: machine(m),
                unit: unit.clone(),
            },
            Fault::Thaw { .. }
            | Fault::Start { .. }
            | Fault::Reboot { .. }
            | Fault::LinkUp { .. }
            | Fault::Heal { .. }
            | Fault::Rejoin { .. }
            | Fault::StartUnit { .. } => return None,
        })
    }

    /// How long injecting it may take: the fault's own deadline plus room for the QMP and
    /// channel calls around it, or a minute.
    pub fn budget(&self) -> Duration {
        match self {
            Fault::Shutdown { timeout, .. }
            | Fault::Start { timeout, .. }
            | Fault::Reboot { timeout, .. } => *timeout + Duration::from_secs(30),
            _ => Duration::from_secs(60),
        }
    }

    /// Refuses a fault that cannot make sense on a lab of `machines`, whatever state it is in:
    /// an unknown machine, or arguments [`Fault::check_arguments`] refuses.
    ///
    /// # Errors
    /// One line saying what was expected and what was seen.
    pub fn check(&self, machines: &[String]) -> Result<(), String> {
        for name in self.machines() {
            if !machines.iter().any(|m| m == name) {
                return Err(format!(
                    "{}: expected a machine of the lab ({}), saw {name:?}",
                    self.name(),
                    machines.join(", ")
                ));
            }
        }
        self.check_arguments()
    }

    /// Refuses arguments that make no sense on any lab: a machine partitioned from itself, a
    /// unit name systemctl would read as an option or as several units, a zero deadline.
    ///
    /// # Errors
    /// One line saying what was expected and what was seen.
    pub fn check_arguments(&self) -> Result<(), String> {
        match self {
            Fault::Partition { a, b } | Fault::Heal { a, b } if a == b => Err(format!(
                "{}: expected two different machines, saw {a:?} twice",
                self.name()
            )),
            Fault::StopUnit { unit, .. } | Fault::StartUnit { unit, .. }
                if unit.is_empty()
                    || unit.starts_with('-')
                    || unit.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                Err(format!(
                    "{}: expected one systemd unit name (e.g. kubelet.service), saw {unit:?}",
                    self.name()
                ))
            }
            Fault::Shutdown { timeout, .. }
            | Fault::Start { timeout, .. }
            | Fault::Reboot { timeout, .. }
                if timeout.is_zero() =>
            {
                Err(format!(
                    "{}: expected a deadline above zero, saw 0s",
                    self.name()
                ))
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition { a, b } | Fault::Heal { a, b } => {
                write!(f, "{} {a} {b}", self.name())
            }
            Fault::StopUnit { machine, unit } | Fault::StartUnit { machine, unit } => {
                write!(f, "{} {unit} on {machine}", self.name())
            }
            _ => write!(f, "{} {}", self.name(), self.machines().join(" ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> Vec<String> {
        ["grey-area", "congenital-optimist", "limiting-factor"]
            .map(String::from)
            .to_vec()
    }

    fn m(name: &str) -> String {
        name.to_string()
    }

    #[test]
    fn every_name_is_listed_once_and_round_trips_through_json() {
        let all = [
            Fault::Crash { machine: m("a") },
            Fault::Freeze { machine: m("a") },
            Fault::Thaw { machine: m("a") },
            Fault::Shutdown {
                machine: m("a"),
                timeout: Duration::from_secs(5),
            },
            Fault::Start {
                machine: m("a"),
                timeout: Duration::from_secs(5),
            },
            Fault::Reboot {
                machine: m("a"),
                timeout: Duration::from_secs(5),
            },
            Fault::LinkDown { machine: m("a") },
            Fault::LinkUp { machine: m("a") },
            Fault::Partition {
                a: m("a"),
                b: m("b"),
            },
            Fault::Heal {
                a: m("a"),
                b: m("b"),
            },
            Fault::Isolate { machine: m("a") },
            Fault::Rejoin { machine: m("a") },
            Fault::StopUnit {
                machine: m("a"),
                unit: m("kubelet.service"),
            },
            Fault::StartUnit {
                machine: m("a"),
                unit: m("kubelet.service"),
            },
        ];
        let kinds: Vec<FaultKind> = all.iter().map(Fault::kind).collect();
        assert_eq!(kinds, FaultKind::ALL);
        for fault in all {
            let json = serde_json::to_string(&fault).expect("serialize");
            assert!(
                json.contains(&format!("\"fault\":\"{}\"", fault.name())),
                "{json}"
            );
            let back: Fault = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, fault);
        }
    }

    #[test]
    fn nonsense_arguments_are_refused_with_what_was_expected() {
        let lab = lab();
        let refused = |fault: Fault| fault.check(&lab).expect_err("refused");
        assert_eq!(
            refused(Fault::Crash {
                machine: m("nosuch")
            }),
            "crash: expected a machine of the lab (grey-area, congenital-optimist, limiting-factor), saw \"nosuch\""
        );
        assert!(refused(Fault::Partition {
            a: m("grey-area"),
            b: m("grey-area")
        })
        .contains("two different machines"));
        assert!(refused(Fault::Heal {
            a: m("grey-area"),
            b: m("nosuch")
        })
        .contains("saw \"nosuch\""));
        for unit in ["", "--now", "kubelet nginx", "a\nb"] {
            assert!(refused(Fault::StopUnit {
                machine: m("grey-area"),
                unit: m(unit)
            })
            .contains("one systemd unit name"));
        }
        assert!(refused(Fault::Start {
            machine: m("grey-area"),
            timeout: Duration::ZERO
        })
        .contains("above zero"));
        assert!(Fault::StopUnit {
            machine: m("grey-area"),
            unit: m("kubelet.service")
        }
        .check(&lab)
        .is_ok());
    }

    #[test]
    fn undo_pairs_each_fault_with_its_end() {
        let crash = Fault::Crash {
            machine: m("limiting-factor"),
        };
        assert_eq!(crash.undo().map(|u| u.name()), Some("start"));
        assert_eq!(
            Fault::Isolate { machine: m("x") }.undo(),
            Some(Fault::Rejoin { machine: m("x") })
        );
        assert_eq!(Fault::Thaw { machine: m("x") }.undo(), None);
        assert_eq!(
            Fault::StopUnit {
                machine: m("x"),
                unit: m("kubelet.service")
            }
            .to_string(),
            "stop-unit kubelet.service on x"
        );
    }
}
