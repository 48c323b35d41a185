//! `SimulatedNodes` - a TEST DOUBLE for kubelets, in the spirit of kwok: Node objects with
//! capacity, kept alive by renewing their Lease and Ready condition every 5 s through kube-rs.
//!
//! The real scheduler binds pods to these nodes and the real node lifecycle controller marks
//! them Unknown and taints them when their heartbeats stop, which is all the kube layer's waits
//! and the readiness gate look at. Nothing runs: pods stay Pending-but-bound (no phase change),
//! and a deleted bound pod stays Terminating unless deleted with grace period 0.
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// How often a simulated node heartbeats (a kubelet's defaults are 10 s for both).
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// Allocatable per simulated node.
pub const CPU: &str = "2";
pub const MEMORY: &str = "4Gi";
pub const PODS: &str = "110";

/// Fake nodes with live heartbeats. Dropping it stops every heartbeat (the Node objects stay).
pub struct SimulatedNodes {
    client: Client,
    names: Vec<String>,
    paused: Arc<Mutex<HashSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

fn now_time() -> Time {
    Time(Timestamp::now())
}

fn ready_condition(now: &Time) -> serde_json::Value {
    json!({
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "message": "simulated kubelet is posting ready status",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    })
}

fn pressure(kind: &str, now: &Time) -> serde_json::Value {
    json!({
        "type": kind, "status": "False", "reason": format!("KubeletHas{kind}"),
        "lastHeartbeatTime": now, "lastTransitionTime": now,
    })
}

fn node_object(name: &str, index: usize) -> serde_json::Value {
    let now = now_time();
    let resources = json!({"cpu": CPU, "memory": MEMORY, "pods": PODS});
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "labtest/simulated": "true",
            }
        },
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                ready_condition(&now),
                pressure("MemoryPressure", &now),
                pressure("DiskPressure", &now),
                pressure("PIDPressure", &now),
            ],
            // Loopback: nothing ever connects to a simulated node.
            "addresses": [
                {"type": "InternalIP", "address": format!("127.0.1.{}", index + 1)},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "simulated",
                "osImage": "simulated", "containerRuntimeVersion": "simulated://0",
                "kubeletVersion": "v1.20.2", "kubeProxyVersion": "v1.20.2",
                "operatingSystem": "linux", "architecture": "amd64",
            },
        }
    })
}

/// One heartbeat: renew the Lease (create it the first time) and post Ready=True.
async fn heartbeat(client: &Client, name: &str) -> Result<(), String> {
    let leases = Api::<Lease>::namespaced(client.clone(), "kube-node-lease");
    let renew = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": 40,
            "renewTime": MicroTime(Timestamp::now()),
        }
    });
    match leases
        .patch(name, &PatchParams::default(), &Patch::Merge(&renew))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let lease: Lease = serde_json::from_value(renew).map_err(|e| e.to_string())?;
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map_err(|e| format!("creating lease {name}: {e}"))?;
        }
        Err(e) => return Err(format!("renewing lease {name}: {e}")),
    }
    let now = now_time();
    // Strategic merge keys conditions by type: only Ready changes, and its transition time is
    // left to the server-side value unless the status flips (as a kubelet does).
    let status = json!({"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "simulated kubelet is posting ready status",
        "lastHeartbeatTime": now,
    }]}});
    Api::<Node>::all(client.clone())
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&status))
        .await
        .map_err(|e| format!("posting node status {name}: {e}"))?;
    Ok(())
}

impl SimulatedNodes {
    /// Creates a Node per name (Ready, [`CPU`]/[`MEMORY`]/[`PODS`] allocatable), beats once for
    /// each, and keeps beating every [`HEARTBEAT`] on the current tokio runtime.
    ///
    /// # Errors
    /// The first node or lease the apiserver refused.
    pub async fn register(client: &Client, names: &[&str]) -> Result<Self, String> {
        let nodes = Api::<Node>::all(client.clone());
        for (index, name) in names.iter().enumerate() {
            let node: Node =
                serde_json::from_value(node_object(name, index)).map_err(|e| e.to_string())?;
            nodes
                .create(&PostParams::default(), &node)
                .await
                .map_err(|e| format!("creating simulated node {name}: {e}"))?;
            heartbeat(client, name).await?;
        }
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let paused = Arc::new(Mutex::new(HashSet::new()));
        let task = {
            let (client, names, paused) = (client.clone(), names.clone(), paused.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(HEARTBEAT).await;
                    for name in &names {
                        let skip = paused.lock().map(|p| p.contains(name)).unwrap_or(false);
                        if !skip {
                            if let Err(e) = heartbeat(&client, name).await {
                                eprintln!("simulated node heartbeat failed: {e}");
                            }
                        }
                    }
                }
            })
        };
        Ok(Self {
            client: client.clone(),
            names,
            paused,
            task,
        })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The node goes silent, like a kubelet that died or a machine cut off the network.
    pub fn stop_heartbeats(&self, name: &str) {
        if let Ok(mut paused) = self.paused.lock() {
            paused.insert(name.to_string());
        }
    }

    /// Beats once right away (a returning kubelet posts status at once), then every
    /// [`HEARTBEAT`] again.
    ///
    /// # Errors
    /// When that first heartbeat is refused.
    pub async fn resume_heartbeats(&self, name: &str) -> Result<(), String> {
        heartbeat(&self.client, name).await?;
        if let Ok(mut paused) = self.paused.lock() {
            paused.remove(name);
        }
        Ok(())
    }
}

impl Drop for SimulatedNodes {
    fn drop(&mut self) {
        self.task.abort();
    }
}
