//! The VM layer's machines are the guests generations are switched in.
use std::time::Duration;

use super::generation::{Guest, GuestError, GuestOutput};
use crate::vm::{ChannelError, Machine, VmError};

fn guest_error(machine: &Machine, command: &str, timeout: Duration, error: VmError) -> GuestError {
    match error {
        VmError::Channel { source, .. } if matches!(*source, ChannelError::Timeout { .. }) => {
            GuestError::Timeout {
                machine: machine.name().to_string(),
                command: command.to_string(),
                timeout,
            }
        }
        other => GuestError::Channel {
            machine: machine.name().to_string(),
            message: other.to_string(),
        },
    }
}

impl Guest for Machine {
    fn name(&self) -> &str {
        Machine::name(self)
    }

    async fn exec(&self, command: &str, timeout: Duration) -> Result<GuestOutput, GuestError> {
        Machine::exec(self, command, timeout)
            .await
            .map(|out| GuestOutput {
                status: out.status,
                stdout: out.stdout,
                stderr: out.stderr,
            })
            .map_err(|e| guest_error(self, command, timeout, e))
    }

    async fn copy_in(
        &self,
        data: &[u8],
        guest_path: &str,
        timeout: Duration,
    ) -> Result<(), GuestError> {
        Machine::copy_in(self, data, guest_path, timeout)
            .await
            .map_err(|e| guest_error(self, guest_path, timeout, e))
    }
}
