//! What a failed bring-up or check leaves in the artifacts folder.
use std::time::Duration;

use crate::error::Chain;
use crate::kube::KubeAccess;
use crate::lab::Lab;
use crate::report::{cpu, ArtifactsDir};

/// The state of the cluster, each machine's kubelet and the last minutes of CPU samples at the
/// moment `what` failed, into the artifacts folder: what a user would otherwise have to reproduce the failure to see.
/// Best effort and bounded: a view that cannot be had says why in its file.
pub async fn capture_failure(
    lab: &Lab,
    kube: Option<&KubeAccess>,
    artifacts: &ArtifactsDir,
    what: &str,
) {
    if let (Some(access), Ok(kubectl)) = (kube, which::which("kubectl")) {
        let views: [(&str, &[&str]); 4] = [
            ("nodes", &["get", "nodes", "-o", "wide", "--show-labels"]),
            ("pods", &["get", "pods", "-A", "-o", "wide"]),
            ("describe-nodes", &["describe", "nodes"]),
            (
                "events",
                &["get", "events", "-A", "--sort-by=.lastTimestamp"],
            ),
        ];
        for (view, args) in views {
            let run = tokio::process::Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(access.kubeconfig())
                .arg("--request-timeout=20s")
                .args(args)
                .output();
            let text = match tokio::time::timeout(Duration::from_secs(60), run).await {
                Ok(Ok(out)) => format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                Ok(Err(e)) => format!("kubectl did not run: {e}"),
                Err(_) => "kubectl did not answer within 60s".to_string(),
            };
            let _ = artifacts.write_kube(&format!("{what}-{view}"), &text);
        }
    }
    let _ = artifacts.write_cpu(what, &cpu::evidence_text(&lab.recent_samples()));
    let unit = lab
        .spec()
        .kubernetes
        .as_ref()
        .map(|k| k.kubelet_unit.clone())
        .unwrap_or_else(|| "kubelet.service".into());
    for machine in lab.machines() {
        // A frozen or powered-off machine cannot answer; asking would only burn the deadline.
        if !machine.is_running() || machine.qmp_status().await.ok().as_deref() != Some("running") {
            continue;
        }
        // A guest that runs but does not answer (seen: both of the master's vCPUs busy, its
        // channel and apiserver silent for minutes): where its vCPUs are, twice, to tell a
        // spin from progress.
        if machine.exec("true", GUEST_ANSWERS).await.is_err() {
            let mut text = String::new();
            for _ in 0..2 {
                match machine.cpu_state().await {
                    Ok(state) => text.push_str(&state),
                    Err(e) => text.push_str(&format!("QEMU did not say: {}\n", Chain(&e))),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let _ = artifacts.write_vcpus(machine.name(), what, &text);
            continue;
        }
        let text = machine.unit_evidence(&unit).await;
        let _ = artifacts.write_journal(machine.name(), &format!("{unit}-after-{what}"), &text);
    }
}

/// How long a running guest gets to answer a `true` before the evidence asks QEMU instead.
const GUEST_ANSWERS: Duration = Duration::from_secs(10);
