//! Which host CPUs a lab's QEMUs may run on: `LABTEST_HOST_CPUS=N` confines every QEMU of a lab
//! to the first N CPUs this process may use, to see how the lab fares on a smaller host (the
//! stand-in for `taskset -c 0` in the TCG notes, as a feature). The affinity is set in the
//! forked child before it execs the run script ([`super::spawn::spawn_guarded`]), so QEMU and
//! every thread it starts inherit it.
use nix::sched::{sched_getaffinity, CpuSet};
use nix::unistd::Pid;

/// The variable users set; named in every error about it.
pub const HOST_CPUS_VAR: &str = "LABTEST_HOST_CPUS";

/// `LABTEST_HOST_CPUS` is not a number of CPUs this process may use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("LABTEST_HOST_CPUS={value:?}: expected a number of host CPUs from 1 to {usable} (the CPUs this process may use)")]
pub struct HostCpusError {
    /// The value as given.
    pub value: String,
    /// How many CPUs this process may use.
    pub usable: usize,
}

/// The first `count` CPUs this process may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCpus {
    count: usize,
    set: CpuSet,
}

impl HostCpus {
    /// Parses `value` against the CPUs this process may use now.
    ///
    /// # Errors
    /// 0, more than this process may use, or not a number.
    pub fn parse(value: &str) -> Result<HostCpus, HostCpusError> {
        let usable = allowed_cpus(0).unwrap_or_default();
        Self::parse_among(value, &usable)
    }

    /// `$LABTEST_HOST_CPUS`, if set.
    ///
    /// # Errors
    /// As [`HostCpus::parse`].
    pub fn from_env() -> Result<Option<HostCpus>, HostCpusError> {
        match std::env::var(HOST_CPUS_VAR) {
            Ok(value) => Self::parse(&value).map(Some),
            Err(_) => Ok(None),
        }
    }

    fn parse_among(value: &str, usable: &[usize]) -> Result<HostCpus, HostCpusError> {
        let refuse = || HostCpusError {
            value: value.to_string(),
            usable: usable.len(),
        };
        let count: usize = value.trim().parse().map_err(|_| refuse())?;
        if count == 0 || count > usable.len() {
            return Err(refuse());
        }
        let mut set = CpuSet::new();
        for &cpu in &usable[..count] {
            set.set(cpu).map_err(|_| refuse())?;
        }
        Ok(HostCpus { count, set })
    }

    /// How many CPUs.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Them, as an affinity mask for QEMU.
    pub fn cpu_set(&self) -> CpuSet {
        self.set
    }
}

/// The CPUs process `pid` may run on (0: this process), in order; `None` when it is gone.
pub fn allowed_cpus(pid: u32) -> Option<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(pid as i32)).ok()?;
    Some(
        (0..CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_within_the_usable_cpus_takes_the_first_ones() {
        let cpus = HostCpus::parse_among("2", &[1, 3, 5]).expect("2 of 3");
        assert_eq!(cpus.count(), 2);
        let set = cpus.cpu_set();
        let chosen: Vec<usize> = (0..8).filter(|&c| set.is_set(c).unwrap()).collect();
        assert_eq!(chosen, [1, 3]);
    }

    #[test]
    fn zero_too_many_and_words_are_refused_naming_the_variable() {
        for bad in ["0", "4", "two", "", "-1"] {
            let err = HostCpus::parse_among(bad, &[0, 1, 2]).expect_err(bad);
            assert_eq!(
                err.to_string(),
                format!("LABTEST_HOST_CPUS={bad:?}: expected a number of host CPUs from 1 to 3 (the CPUs this process may use)")
            );
        }
    }

    #[test]
    fn this_process_may_use_at_least_one_cpu() {
        assert!(!allowed_cpus(0).expect("our own affinity").is_empty());
    }
}
