//! Tier 4 foundation: the fixture lab (fixtures/lab) end to end on real QEMU (TCG here) - prepare,
//! `nix build` with the harness's nix layer, boot with the lab layer, join the nodes with the
//! spec's commands, three Ready nodes seen by the host's kubectl, then a system generation switch
//! on limiting-factor (its label appears), a generation that breaks the kubelet (the unit ends
//! `failed`), and two rollbacks (kubelet back, label kept; then the label goes).
//!
//! The kube steps use plain guest exec + the host's /usr/bin/kubectl until harness/src/kube/
//! offers them.
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::events::Events;
use harness::lab::{Lab, LabBuilder, LabSpec};
use harness::nix::{Nix, SystemProfile};
use harness::vm::Accel;
use harness::wait::{poll_until, Poll, Wait};

const NODES: [&str; 3] = ["grey-area", "congenital-optimist", "limiting-factor"];

fn lab_dir() -> PathBuf {
    support::repo_root().join("fixtures/lab")
}

fn wait(what: &str, secs: u64) -> Wait {
    Wait::new(what, Duration::from_secs(secs), Duration::from_secs(3))
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=30s")
        .args(args)
        .output()
        .map_err(|e| format!("could not run /usr/bin/kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {args:?} exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `name=Ready-status` for every node kubectl lists.
fn node_readiness(kubeconfig: &Path) -> Result<Vec<(String, String)>, String> {
    let out = kubectl(
        kubeconfig,
        &[
            "get",
            "nodes",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
        ],
    )?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect())
}

fn node_label(kubeconfig: &Path, node: &str) -> Result<String, String> {
    kubectl(
        kubeconfig,
        &[
            "get",
            "node",
            node,
            "-o",
            r"jsonpath={.metadata.labels.labtest\.io/generation}",
        ],
    )
}

/// Evidence for a failure: the units that matter on every machine.
async fn evidence(lab: &Lab) -> String {
    let mut text = String::new();
    for m in lab.machines() {
        let out = m
            .exec(
                "systemctl --no-pager list-units 'kube*' etcd.service containerd.service 'labtest*' kernel-command-line.service; \
                 journalctl --no-pager -n 25 -u kubelet -u kernel-command-line -u labtest-cluster-setup -u kube-apiserver",
                Duration::from_secs(30),
            )
            .await
            .map(|o| o.stdout_str())
            .unwrap_or_else(|e| e.to_string());
        text.push_str(&format!("===== {}\n{out}\n", m.name()));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_lab_boots_joins_and_switches_generations() {
    // Prepare: cached guest + Kubernetes builds, local/paths.json.
    let t = Instant::now();
    let lab_path = support::script_output(&lab_dir().join("prepare.sh"), &[], &[]);
    assert_eq!(Path::new(&lab_path), lab_dir());
    eprintln!("[fixture-lab] prepare: {:.1}s", t.elapsed().as_secs_f64());

    // Build the lab with the harness's nix layer (Debian's Nix 2.8, single user, no sandbox).
    let nix = Nix::find()
        .expect("Nix (apt-get install nix-bin)")
        .for_debian_single_user()
        .with_config("experimental-features = nix-command flakes");
    let out_dir = tempfile::Builder::new()
        .prefix("labtest-fixture-lab-")
        .tempdir()
        .unwrap();
    let flake = format!("path:{}", lab_dir().display());
    let spec = LabSpec::load(&lab_dir()).unwrap();
    let t = Instant::now();
    let built = nix
        .build(
            &flake,
            &[spec.vm_attr.as_str()],
            out_dir.path(),
            Duration::from_secs(900),
            |_| {},
        )
        .await
        .unwrap();
    let run_dir = built[0].clone();
    eprintln!(
        "[fixture-lab] nix build #{}: {:.1}s -> {}",
        spec.vm_attr,
        t.elapsed().as_secs_f64(),
        run_dir.display()
    );
    let base_lf = std::fs::read_to_string(run_dir.join("system-limiting-factor"))
        .unwrap()
        .trim()
        .to_string();

    // Boot.
    let k8s = spec.kubernetes.clone().expect("[kubernetes] in lab.toml");
    let t = Instant::now();
    let lab = LabBuilder::new(spec.clone(), &run_dir)
        .accel(Accel::Tcg)
        .boot_timeout(Duration::from_secs(400))
        .start(&Events::discard())
        .await
        .expect("the fixture lab boots");
    eprintln!(
        "[fixture-lab] 3 guest channels up: {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let boot = Instant::now();
    let master = lab.machine(&k8s.master).unwrap();

    // Join: the master's token, piped into every node's join command.
    let token_cmd = k8s
        .join_token_command
        .as_deref()
        .expect("join_token_command");
    let out = master
        .exec(token_cmd, Duration::from_secs(420))
        .await
        .unwrap();
    assert_eq!(
        out.status,
        0,
        "join_token_command failed: {}\n{}",
        out.stderr_str(),
        evidence(&lab).await
    );
    let token = out.stdout_str().trim().to_string();
    assert!(!token.is_empty(), "join_token_command printed nothing");
    eprintln!(
        "[fixture-lab] join token after {:.1}s",
        boot.elapsed().as_secs_f64()
    );
    let join_cmd = k8s.join_command.as_deref().expect("join_command");
    let t = Instant::now();
    for name in NODES {
        let m = lab.machine(name).unwrap();
        let out = m
            .exec(
                &format!("printf '%s\\n' '{token}' | ( {join_cmd} )"),
                Duration::from_secs(420),
            )
            .await
            .unwrap();
        assert_eq!(
            out.status,
            0,
            "{name}: join failed: {}{}",
            out.stdout_str(),
            out.stderr_str()
        );
        eprintln!("[fixture-lab] {name}: {}", out.stdout_str().trim());
    }
    eprintln!(
        "[fixture-lab] join (3 machines): {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // The admin kubeconfig, pointed at the forwarded port with the certificate's name.
    let port = master
        .host_port(k8s.apiserver_port)
        .expect("the master forwards the apiserver port");
    let text = String::from_utf8(
        master
            .copy_out(&k8s.admin_kubeconfig, Duration::from_secs(60))
            .await
            .unwrap(),
    )
    .unwrap();
    let mut rewritten = String::new();
    for line in text.lines() {
        if let Some((indent, _)) = line.split_once("server: ") {
            rewritten.push_str(&format!("{indent}server: https://127.0.0.1:{port}\n"));
            if let Some(name) = &k8s.tls_server_name {
                rewritten.push_str(&format!("{indent}tls-server-name: {name}\n"));
            }
        } else {
            rewritten.push_str(line);
            rewritten.push('\n');
        }
    }
    let kubeconfig = out_dir.path().join("admin.kubeconfig");
    std::fs::write(&kubeconfig, rewritten).unwrap();

    // Three Ready nodes, seen from the host.
    let ready = poll_until(&wait("3 nodes Ready", 900), || async {
        match node_readiness(&kubeconfig) {
            Ok(nodes) if nodes.len() == 3 && nodes.iter().all(|(_, s)| s == "True") => {
                Poll::Ready(nodes)
            }
            Ok(nodes) => Poll::Pending(format!("nodes: {nodes:?}")),
            Err(e) => Poll::Pending(e),
        }
    })
    .await;
    if let Err(e) = &ready {
        panic!("{e}\n{}", evidence(&lab).await);
    }
    eprintln!(
        "[fixture-lab] 3 nodes Ready {:.1}s after the guest channels answered",
        boot.elapsed().as_secs_f64()
    );

    // Pods on every node reach each other across the lab network (bridge CNI + static routes),
    // and the apiserver reaches the kubelets (kubectl exec).
    let t = Instant::now();
    let manifest: String = NODES
        .iter()
        .map(|node| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: web-{node}}}\nspec:\n  nodeName: {node}\n  \
                 containers:\n  - {{name: web, image: {}, imagePullPolicy: Never}}\n---\n",
                k8s.workload_image
            )
        })
        .collect();
    let manifest_path = out_dir.path().join("web.yaml");
    std::fs::write(&manifest_path, manifest).unwrap();
    let manifest_arg = manifest_path.to_string_lossy().into_owned();
    let ips = poll_until(&wait("a web pod Running on every node", 600), || async {
        // The `default` ServiceAccount may not exist yet: apply again until it is accepted.
        if let Err(e) = kubectl(&kubeconfig, &["apply", "-f", &manifest_arg]) {
            return Poll::Pending(e);
        }
        let out = match kubectl(
            &kubeconfig,
            &[
                "get",
                "pods",
                "-o",
                r#"jsonpath={range .items[*]}{.metadata.name}={.status.phase}={.status.podIP}{"\n"}{end}"#,
            ],
        ) {
            Ok(out) => out,
            Err(e) => return Poll::Pending(e),
        };
        let running: Vec<(String, String)> = out
            .lines()
            .filter_map(|l| {
                let mut parts = l.split('=');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(n), Some("Running"), Some(ip)) if !ip.is_empty() => {
                        Some((n.to_string(), ip.to_string()))
                    }
                    _ => None,
                }
            })
            .collect();
        if running.len() == NODES.len() {
            Poll::Ready(running)
        } else {
            Poll::Pending(format!("pods: {}", out.trim().replace('\n', ", ")))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "[fixture-lab] 3 pods Running {:.1}s after nodes Ready: {ips:?}",
        t.elapsed().as_secs_f64()
    );
    for (name, ip) in &ips {
        assert!(ip.starts_with("10.244."), "{name} has pod IP {ip}");
        let from = if name == "web-limiting-factor" {
            "web-grey-area"
        } else {
            "web-limiting-factor"
        };
        let page = kubectl(
            &kubeconfig,
            &[
                "exec",
                from,
                "--",
                // busybox-static's `wget -T` segfaults (exit 139); bound it with `timeout` instead.
                "timeout",
                "20",
                "wget",
                "-qO-",
                &format!("http://{ip}:8080/"),
            ],
        )
        .unwrap_or_else(|e| panic!("{from} -> {name} ({ip}): {e}"));
        assert!(!page.trim().is_empty(), "{from} -> {name}: empty page");
    }
    eprintln!("[fixture-lab] pod to pod across nodes and kubectl exec work");

    // Generation switch on limiting-factor: node-label.
    let lf = lab.machine("limiting-factor").unwrap();
    let gen = spec
        .generations
        .iter()
        .find(|g| g.name == "node-label")
        .expect("generation node-label");
    let t = Instant::now();
    let toplevel = nix
        .build(
            &flake,
            &[gen.attr.as_str()],
            out_dir.path(),
            Duration::from_secs(600),
            |_| {},
        )
        .await
        .unwrap()
        .remove(0);
    eprintln!(
        "[fixture-lab] nix build {}: {:.1}s",
        gen.attr,
        t.elapsed().as_secs_f64()
    );
    let profile = SystemProfile::default();
    let before = profile.current(&**lf).await.unwrap();
    assert_eq!(before.profile.as_deref(), Some(base_lf.as_str()));
    assert_eq!(before.running.as_deref(), Some(base_lf.as_str()));
    let t = Instant::now();
    let activation = profile.switch_to(&nix, &**lf, &toplevel).await.unwrap();
    assert!(activation.succeeded(), "switch failed: {activation:?}");
    let now = profile.current(&**lf).await.unwrap();
    let want = toplevel.to_string_lossy().into_owned();
    assert_eq!(now.profile.as_deref(), Some(want.as_str()));
    assert_eq!(now.running.as_deref(), Some(want.as_str()));
    let switched = t.elapsed();
    poll_until(
        &wait("label labtest.io/generation=node-label", 300),
        || async {
            match node_label(&kubeconfig, "limiting-factor") {
                Ok(v) if v == "node-label" => Poll::Ready(()),
                Ok(v) => Poll::Pending(format!("label is {v:?}")),
                Err(e) => Poll::Pending(e),
            }
        },
    )
    .await
    .unwrap();
    eprintln!(
        "[fixture-lab] switch to node-label: activation {:.1}s, label visible {:.1}s",
        switched.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );

    // A generation that breaks the kubelet: the unit ends `failed` (its start limit), not
    // `activating` forever.
    let broken = spec
        .generations
        .iter()
        .find(|g| g.name == "broken-kubelet")
        .expect("generation broken-kubelet");
    let broken_top = nix
        .build(
            &flake,
            &[broken.attr.as_str()],
            out_dir.path(),
            Duration::from_secs(600),
            |_| {},
        )
        .await
        .unwrap()
        .remove(0);
    let t = Instant::now();
    let activation = profile.switch_to(&nix, &**lf, &broken_top).await.unwrap();
    assert!(activation.succeeded(), "switch failed: {activation:?}");
    let state_cmd = format!("systemctl show -P ActiveState {}", k8s.kubelet_unit);
    poll_until(&wait("kubelet.service failed", 180), || async {
        match lf.exec(&state_cmd, Duration::from_secs(30)).await {
            Ok(out) if out.stdout_str().trim() == "failed" => Poll::Ready(()),
            Ok(out) => Poll::Pending(format!("kubelet is {}", out.stdout_str().trim())),
            Err(e) => Poll::Pending(e.to_string()),
        }
    })
    .await
    .unwrap();
    let log = lf
        .succeed("journalctl --no-pager -u kubelet.service | grep -c 'unknown flag: --labtest-rejected-flag' || true")
        .await
        .unwrap();
    assert_ne!(
        log.trim(),
        "0",
        "the kubelet failed, but not on the rejected flag"
    );
    eprintln!(
        "[fixture-lab] switch to broken-kubelet: kubelet failed after {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // Rollback twice: to node-label (the kubelet runs again, the label stays), then to the boot
    // generation (the label goes).
    for (to, label) in [(want.as_str(), "node-label"), (base_lf.as_str(), "")] {
        let t = Instant::now();
        let activation = profile.rollback(&**lf).await.unwrap();
        assert!(activation.succeeded(), "rollback failed: {activation:?}");
        let now = profile.current(&**lf).await.unwrap();
        assert_eq!(now.profile.as_deref(), Some(to));
        assert_eq!(now.running.as_deref(), Some(to));
        let rolled = t.elapsed();
        lf.wait_for_unit(&k8s.kubelet_unit, &wait("kubelet active", 120))
            .await
            .unwrap();
        poll_until(
            &wait(&format!("label {label:?} on limiting-factor"), 300),
            || async {
                match node_label(&kubeconfig, "limiting-factor") {
                    Ok(v) if v == label => Poll::Ready(()),
                    Ok(v) => Poll::Pending(format!("label is {v:?}")),
                    Err(e) => Poll::Pending(e),
                }
            },
        )
        .await
        .unwrap();
        poll_until(
            &wait("limiting-factor Ready after rollback", 300),
            || async {
                match node_readiness(&kubeconfig) {
                    Ok(nodes)
                        if nodes
                            .iter()
                            .any(|(n, s)| n == "limiting-factor" && s == "True") =>
                    {
                        Poll::Ready(())
                    }
                    Ok(nodes) => Poll::Pending(format!("nodes: {nodes:?}")),
                    Err(e) => Poll::Pending(e),
                }
            },
        )
        .await
        .unwrap();
        eprintln!(
            "[fixture-lab] rollback to {to}: activation {:.1}s, kubelet active, label {label:?} and node Ready {:.1}s",
            rolled.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
    }
    let generations = profile.list_generations(&**lf).await.unwrap();
    assert_eq!(generations.len(), 3, "{generations:?}");
}
