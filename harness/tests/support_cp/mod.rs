//! A real Kubernetes v1.20.2 control plane on the host, for the kube layer's fast tier.
//!
//! etcd, kube-apiserver, kube-scheduler and kube-controller-manager from `fixtures/k8s/build.sh`
//! (cached; the first run on a machine builds for ~5 min), credentials from `fixtures/k8s/pki.sh`,
//! on free 127.0.0.1 ports, with the node-lifecycle settings of the notes' measurements
//! (`--node-monitor-grace-period=16s`, default not-ready/unreachable tolerations 30 s) so node
//! failure plays out in seconds. Flags follow `fixtures/k8s/smoke.sh`, the working example.
//!
//! Every process is spawned with `harness::vm::spawn::spawn_guarded` (SIGKILL when the test
//! process dies, however it dies) and killed when the [`ControlPlane`] is dropped. Logs stay in
//! the work dir, which is kept (and its path printed) when the test panicked.
//!
//! There is no kubelet: nodes are [`simulated::SimulatedNodes`].
#![allow(dead_code)] // each test binary uses a different part

pub mod simulated;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::kube::KubeAccess;
use harness::vm::spawn::{kill_group, spawn_guarded};
use harness::wait::{poll_until, Poll, Wait};

pub struct ControlPlane {
    /// Work dir: pki/, etcd data, one log per component.
    pub dir: PathBuf,
    tmp: Option<tempfile::TempDir>,
    children: Vec<(String, Child)>,
    pub api_port: u16,
    /// `pki.sh`'s admin kubeconfig (client certificate, server https://127.0.0.1:<api_port>).
    pub kubeconfig: PathBuf,
    pub access: KubeAccess,
    /// Named start-up steps and when each was done, counted from [`ControlPlane::start`].
    pub timings: Vec<(String, Duration)>,
    started: Instant,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Runs `fixtures/k8s/build.sh` (cached) and returns its output directory (its last stdout line).
pub fn build_dir() -> Result<PathBuf, String> {
    let script = repo_root().join("fixtures/k8s/build.sh");
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("expected to run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "expected {} to succeed, it exited {}; stderr tail:\n{}",
            script.display(),
            out.status,
            harness::wait::tail_chars(&stderr, 3000)
        ));
    }
    let dir = stdout.lines().last().map(str::trim).unwrap_or_default();
    let dir = PathBuf::from(dir);
    if !dir.join("bin/kube-apiserver").is_file() {
        return Err(format!(
            "expected {} to print a build dir with bin/kube-apiserver as its last line, saw {:?}",
            script.display(),
            dir
        ));
    }
    Ok(dir)
}

fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    // All bound at once so they differ; released just before use (a race we accept on loopback).
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("binding a free port: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("reading a bound port: {e}"))
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

impl ControlPlane {
    /// Starts etcd, the apiserver, the scheduler and the controller-manager and waits until the
    /// apiserver's /readyz passes and the scheduler and controller-manager listen. The `default`
    /// ServiceAccount comes ~4.5 s later: the readiness gate (or [`Self::wait_default_sa`]) waits
    /// for it.
    ///
    /// # Errors
    /// A message naming the step, what was seen and the log to read.
    pub async fn start() -> Result<Self, String> {
        let t0 = Instant::now();
        let mut timings = Vec::new();
        let build = tokio::task::spawn_blocking(build_dir)
            .await
            .map_err(|e| format!("build.sh task: {e}"))??;
        timings.push(("build.sh (cached)".to_string(), t0.elapsed()));
        let bin = build.join("bin");
        let tmp = tempfile::Builder::new()
            .prefix("labtest-cp-")
            .tempdir()
            .map_err(|e| format!("creating a work dir: {e}"))?;
        let dir = tmp.path().to_path_buf();
        let ports = free_ports(5)?;
        let (p_etcd, p_peer, p_api, p_sched, p_cm) =
            (ports[0], ports[1], ports[2], ports[3], ports[4]);
        let pki = dir.join("pki");
        let out = Command::new(repo_root().join("fixtures/k8s/pki.sh"))
            .arg(&pki)
            .arg("--server")
            .arg(format!("https://127.0.0.1:{p_api}"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running pki.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "expected pki.sh to succeed, it exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        timings.push(("pki.sh".to_string(), t0.elapsed()));

        let mut cp = ControlPlane {
            dir: dir.clone(),
            tmp: Some(tmp),
            children: Vec::new(),
            api_port: p_api,
            kubeconfig: pki.join("admin.kubeconfig"),
            // Replaced below once the apiserver is up; building a client does no I/O.
            access: KubeAccess::from_file(&pki.join("admin.kubeconfig"))
                .await
                .map_err(|e| e.to_string())?,
            timings,
            started: t0,
        };

        let url = |p: u16| format!("http://127.0.0.1:{p}");
        cp.spawn(
            "etcd",
            Command::new("etcd").args([
                "--name=labtest".to_string(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={}", url(p_etcd)),
                format!("--advertise-client-urls={}", url(p_etcd)),
                format!("--listen-peer-urls={}", url(p_peer)),
                format!("--initial-advertise-peer-urls={}", url(p_peer)),
                format!("--initial-cluster=labtest={}", url(p_peer)),
            ]),
        )?;
        cp.wait_until("etcd healthy", Duration::from_secs(30), || {
            http_get(p_etcd, "/health").is_some_and(|b| b.contains("\"health\":\"true\""))
        })
        .await?;

        let flags = std::fs::read_to_string(pki.join("apiserver.flags"))
            .map_err(|e| format!("reading pki/apiserver.flags: {e}"))?;
        let mut api = Command::new(bin.join("kube-apiserver"));
        api.args([
            format!("--etcd-servers={}", url(p_etcd)),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={p_api}"),
            "--insecure-port=0".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--allow-privileged=true".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--endpoint-reconciler-type=none".into(),
            // DefaultTolerationSeconds: evict from a NotReady/unreachable node after 30 s, not 300 s.
            "--default-not-ready-toleration-seconds=30".into(),
            "--default-unreachable-toleration-seconds=30".into(),
        ]);
        api.args(flags.lines().map(str::trim).filter(|l| !l.is_empty()));
        let t_api = Instant::now();
        cp.spawn("kube-apiserver", &mut api)?;
        let client = cp.access.client().clone();
        let wait = Wait::new(
            "apiserver /readyz",
            Duration::from_secs(60),
            Duration::from_millis(100),
        );
        let readyz = poll_until(&wait, || {
            let client = client.clone();
            async move {
                let request = match http::Request::get("/readyz").body(Vec::new()) {
                    Ok(r) => r,
                    Err(e) => return Poll::Failed(e.to_string()),
                };
                match client.request_text(request).await {
                    Ok(_) => Poll::Ready(()),
                    Err(e) => Poll::Pending(e.to_string()),
                }
            }
        })
        .await;
        if let Err(e) = readyz {
            return Err(format!("{e}; {}", cp.log_hint("kube-apiserver")));
        }
        cp.timings.push((
            format!(
                "apiserver /readyz ({:.2}s after its start)",
                t_api.elapsed().as_secs_f64()
            ),
            t0.elapsed(),
        ));

        let kc = |name: &str| pki.join(name).display().to_string();
        cp.spawn(
            "kube-scheduler",
            Command::new(bin.join("kube-scheduler")).args([
                format!("--kubeconfig={}", kc("scheduler.kubeconfig")),
                format!("--authentication-kubeconfig={}", kc("scheduler.kubeconfig")),
                format!("--authorization-kubeconfig={}", kc("scheduler.kubeconfig")),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={p_sched}"),
                "--port=0".into(),
                "--leader-elect=false".into(),
            ]),
        )?;
        cp.spawn(
            "kube-controller-manager",
            Command::new(bin.join("kube-controller-manager")).args([
                format!("--kubeconfig={}", kc("controller-manager.kubeconfig")),
                format!(
                    "--authentication-kubeconfig={}",
                    kc("controller-manager.kubeconfig")
                ),
                format!(
                    "--authorization-kubeconfig={}",
                    kc("controller-manager.kubeconfig")
                ),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={p_cm}"),
                "--port=0".into(),
                "--leader-elect=false".into(),
                "--use-service-account-credentials=true".into(),
                format!("--service-account-private-key-file={}", kc("sa.key")),
                format!("--root-ca-file={}", kc("ca.crt")),
                format!("--cluster-signing-cert-file={}", kc("ca.crt")),
                format!("--cluster-signing-key-file={}", kc("ca.key")),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                // The notes' measured node-lifecycle settings (monitor period left at its 5 s
                // default): Unknown ~17 s after the last heartbeat, NoExecute ~19 s.
                "--node-monitor-grace-period=16s".into(),
            ]),
        )?;
        for (name, port) in [
            ("kube-scheduler", p_sched),
            ("kube-controller-manager", p_cm),
        ] {
            cp.wait_until(
                &format!("{name} listening"),
                Duration::from_secs(60),
                || TcpStream::connect(("127.0.0.1", port)).is_ok(),
            )
            .await?;
        }
        cp.timings.push(("control plane up".into(), t0.elapsed()));
        Ok(cp)
    }

    fn spawn(&mut self, name: &str, command: &mut Command) -> Result<(), String> {
        let log_path = self.dir.join(format!("{name}.log"));
        let log =
            File::create(&log_path).map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("cloning {}: {e}", log_path.display()))?;
        command.stdin(Stdio::null()).stdout(log).stderr(err);
        let taken = std::mem::replace(command, Command::new("true"));
        let child = spawn_guarded(taken).map_err(|e| format!("expected to start {name}: {e}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    fn log_hint(&self, name: &str) -> String {
        let path = self.dir.join(format!("{name}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        format!(
            "log {} ends with:\n{}",
            path.display(),
            harness::wait::tail_chars(&text, 2000)
        )
    }

    /// A process that exited: the control plane is broken, and waiting longer is pointless.
    pub fn exited(&mut self) -> Option<String> {
        for (name, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(format!("{name} exited ({status})"));
            }
        }
        None
    }

    async fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let wait = Wait::new(what, timeout, Duration::from_millis(100));
        let result = poll_until(&wait, || {
            let outcome = if let Some(gone) = self.exited() {
                Poll::Failed(gone)
            } else if check() {
                Poll::Ready(())
            } else {
                Poll::Pending("not yet".to_string())
            };
            async move { outcome }
        })
        .await;
        match result {
            Ok(()) => {
                self.timings
                    .push((what.to_string(), self.started.elapsed()));
                Ok(())
            }
            Err(e) => {
                let component = what.split(' ').next().unwrap_or(what);
                Err(format!("{e}; {}", self.log_hint(component)))
            }
        }
    }

    /// Prints the start-up timings (test output shows them with --nocapture or on failure).
    pub fn print_timings(&self, test: &str) {
        for (step, took) in &self.timings {
            eprintln!(
                "[{test}] control plane: {step} at {:.2}s",
                took.as_secs_f64()
            );
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Reverse order: clients of etcd go before etcd, so nothing logs a storm of errors.
        while let Some((_, mut child)) = self.children.pop() {
            kill_group(&mut child);
        }
        if std::thread::panicking() {
            if let Some(tmp) = self.tmp.take() {
                eprintln!("control plane logs kept in {}", tmp.keep().display());
            }
        }
    }
}
