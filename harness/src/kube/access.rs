//! Reaching the lab's apiserver from the host.
//!
//! The admin kubeconfig lives on the master guest and names the apiserver as the guest sees it
//! (`https://grey-area:443`, `https://10.77.0.10:6443`). From the host the apiserver is only
//! reachable through QEMU's host port forward on 127.0.0.1, so the kubeconfig is rewritten: the
//! server becomes `https://127.0.0.1:<host port>` and `tls-server-name` keeps certificate
//! verification honest (the certificate names the guest, not 127.0.0.1). Files the kubeconfig
//! references on the guest (NixOS writes `certificate-authority: /var/lib/...`) are inlined, so
//! the written kubeconfig works on the host for kube-rs and `kubectl` alike.
//!
//! # Caveats
//! The written kubeconfig is JSON (a YAML subset that kubectl and kube-rs read), because it is
//! produced from the parsed form and no YAML writer is needed for that.
use std::path::{Path, PathBuf};
use std::time::Duration;

use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::{Client, Config};
use serde_json::Value;

use super::{brief, KubeError};
use crate::error::Chain;
use crate::vm::channel::ansi_c_quote;
use crate::vm::{Machine, VmError};
use crate::wait::{poll_until, Poll, Wait};

/// How long one API request may take before the client gives up on it. Requests through the
/// host port forward took up to 0.95 s with three busy TCG guests; 30 s leaves room for a loaded
/// guest without letting a frozen one hang a call (and the wait around it) forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP connect (plus TLS) to the forward. QEMU accepts at once even when the guest is frozen, so
/// a short connect timeout costs nothing; the read timeout is what catches a frozen guest.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for one cluster plus the kubeconfig file that reaches it from the host.
///
/// # Usage
/// ```no_run
/// # async fn demo() -> Result<(), harness::kube::KubeError> {
/// use harness::kube::KubeAccess;
/// let access = KubeAccess::from_file("/tmp/lab/kubeconfig".as_ref()).await?;
/// let version = harness::kube::apiserver_version(access.client()).await?;
/// println!("{} at {}", version.git_version, access.server());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KubeAccess {
    client: Client,
    kubeconfig: PathBuf,
    server: String,
}

impl KubeAccess {
    /// Fetches the admin kubeconfig at `guest_path` from `master`, points it at the host port
    /// forwarded to `apiserver_port` with `tls_server_name`, writes it to `write_to` (mode 0600)
    /// and builds a client from it.
    ///
    /// Waits up to `within` for the kubeconfig and for every file it references to exist and be
    /// non-empty, then reads them: on NixOS the kubeconfig is a store file present from
    /// activation, while certmgr writes the certificate and key it names under
    /// /var/lib/kubernetes/secrets later.
    ///
    /// # Errors
    /// [`KubeError::NoForward`] when the machine forwards no port to `apiserver_port`;
    /// [`KubeError::FetchKubeconfig`] when the file, or one it references, is not there within
    /// `within` (naming the files still missing) or cannot be read;
    /// [`KubeError::BadKubeconfig`] when it does not parse or names no usable cluster;
    /// [`KubeError::Io`] when `write_to` cannot be written; [`KubeError::Client`].
    pub async fn from_master(
        master: &Machine,
        guest_path: &str,
        apiserver_port: u16,
        tls_server_name: Option<&str>,
        write_to: &Path,
        within: Duration,
    ) -> Result<Self, KubeError> {
        let host_port = master
            .host_port(apiserver_port)
            .ok_or_else(|| KubeError::NoForward {
                machine: master.name().to_string(),
                port: apiserver_port,
                forwards: forwards(master),
            })?;
        let origin = format!("{}:{guest_path}", master.name());
        let fetch_error = |path: &str, source| KubeError::FetchKubeconfig {
            machine: master.name().to_string(),
            path: path.to_string(),
            source: Box::new(source),
        };
        let base = Path::new(guest_path)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into());
        let wait = Wait::new(
            format!(
                "{} to have {guest_path} and every file it references",
                master.name()
            ),
            within,
            Duration::from_secs(2),
        );
        let mut config = poll_until(&wait, || async {
            let text = match master
                .exec(&format!("cat {}", ansi_c_quote(guest_path)), FETCH_TIMEOUT)
                .await
            {
                Ok(out) if out.status == 0 && !out.stdout_str().trim().is_empty() => {
                    out.stdout_str()
                }
                Ok(_) => return Poll::Pending(format!("{guest_path} is missing or empty")),
                Err(e) => return Poll::Pending(Chain(&e).to_string()),
            };
            let config = match parse(&text, &origin) {
                Ok(config) => config,
                Err(e) => return Poll::Failed(Chain(&e).to_string()),
            };
            let paths: Vec<String> = file_references(&config)
                .iter()
                .map(|r| resolve(&base, &r.path))
                .collect();
            match missing_files(master, &paths).await {
                Ok(missing) if missing.is_empty() => Poll::Ready(config),
                Ok(missing) => Poll::Pending(format!(
                    "{guest_path} references {}, still missing or empty",
                    missing.join(", ")
                )),
                Err(e) => Poll::Pending(Chain(&e).to_string()),
            }
        })
        .await
        .map_err(|source| {
            fetch_error(
                guest_path,
                VmError::Wait {
                    machine: master.name().to_string(),
                    source,
                    console: master.console_log(),
                },
            )
        })?;
        for reference in file_references(&config) {
            let path = resolve(&base, &reference.path);
            // base64 in the guest, because the guest channel carries text and keys are bytes.
            let command = match reference.kind {
                Inline::Base64 => format!("base64 -w0 {}", ansi_c_quote(&path)),
                Inline::Text => format!("cat {}", ansi_c_quote(&path)),
            };
            let content = master
                .succeed_within(&command, FETCH_TIMEOUT)
                .await
                .map_err(|e| fetch_error(&path, e))?;
            reference.inline(&mut config, content.trim());
        }
        let server = format!("https://127.0.0.1:{host_port}");
        point_at(&mut config, &server, tls_server_name, &origin)?;
        write_kubeconfig(&config, write_to)?;
        let client = client_from(&config, &origin).await?;
        Ok(Self {
            client,
            kubeconfig: write_to.to_path_buf(),
            server,
        })
    }

    /// Uses an existing kubeconfig file as it is (its current context).
    ///
    /// # Errors
    /// [`KubeError::Io`] when it cannot be read, [`KubeError::BadKubeconfig`],
    /// [`KubeError::Client`].
    pub async fn from_file(path: &Path) -> Result<Self, KubeError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KubeError::Io {
            context: "reading kubeconfig".into(),
            path: path.to_path_buf(),
            source,
        })?;
        let config = parse(&text, &origin)?;
        let server = current_cluster(&config, &origin)
            .ok()
            .and_then(|i| config["clusters"][i]["cluster"]["server"].as_str())
            .unwrap_or("(none)")
            .to_string();
        let client = client_from(&config, &origin).await?;
        Ok(Self {
            client,
            kubeconfig: path.to_path_buf(),
            server,
        })
    }

    /// The kube-rs client, for calls the harness does not wrap.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The kubeconfig file that reaches this cluster from the host (for `kubectl --kubeconfig`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The apiserver URL the client talks to.
    pub fn server(&self) -> &str {
        &self.server
    }
}

fn forwards(machine: &Machine) -> String {
    let list: Vec<String> = machine
        .config()
        .forwards
        .iter()
        .map(|(host, guest)| format!("host {host} -> guest {guest}"))
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// Which of `paths` are missing or empty on `machine`, in one command.
async fn missing_files(machine: &Machine, paths: &[String]) -> Result<Vec<String>, VmError> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let quoted: Vec<String> = paths.iter().map(|p| ansi_c_quote(p)).collect();
    let out = machine
        .succeed_within(
            &format!(
                "for f in {}; do [ -s \"$f\" ] || echo \"$f\"; done",
                quoted.join(" ")
            ),
            FETCH_TIMEOUT,
        )
        .await?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// Parses a kubeconfig (YAML or JSON) into its generic form, validated by kube-rs's own parser
/// so that what we later write is something kube-rs reads back.
///
/// # Errors
/// [`KubeError::BadKubeconfig`] naming `origin`.
pub fn parse(text: &str, origin: &str) -> Result<Value, KubeError> {
    let typed = Kubeconfig::from_yaml(text).map_err(|e| KubeError::BadKubeconfig {
        origin: origin.into(),
        expected: "a kubeconfig (YAML or JSON)".into(),
        seen: e.to_string(),
    })?;
    serde_json::to_value(&typed).map_err(|e| KubeError::BadKubeconfig {
        origin: origin.into(),
        expected: "a kubeconfig that serializes".into(),
        seen: e.to_string(),
    })
}

/// Index into `clusters` of the current context's cluster, or of the only cluster.
fn current_cluster(config: &Value, origin: &str) -> Result<usize, KubeError> {
    let bad = |expected: &str, seen: String| KubeError::BadKubeconfig {
        origin: origin.into(),
        expected: expected.into(),
        seen,
    };
    let clusters = config["clusters"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = clusters.iter().filter_map(|c| c["name"].as_str()).collect();
    let wanted = match config["current-context"].as_str() {
        Some(context) => {
            let found = config["contexts"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["name"].as_str() == Some(context)))
                .and_then(|c| c["context"]["cluster"].as_str());
            match found {
                Some(cluster) => cluster.to_string(),
                None => {
                    return Err(bad(
                        "current-context to name a context with a cluster",
                        format!("current-context {context:?} and no such context"),
                    ))
                }
            }
        }
        None if names.len() == 1 => names[0].to_string(),
        None => {
            return Err(bad(
                "a current-context, or exactly one cluster",
                format!("no current-context and clusters {names:?}"),
            ))
        }
    };
    names.iter().position(|n| *n == wanted).ok_or_else(|| {
        bad(
            "the current context's cluster among the clusters",
            format!("cluster {wanted:?}, clusters {names:?}"),
        )
    })
}

/// Points the current context's cluster at `server` and sets (or clears) its `tls-server-name`.
///
/// # Errors
/// [`KubeError::BadKubeconfig`] when no cluster can be chosen.
///
/// # Usage
/// ```
/// let text = "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: https://10.77.0.10:443\n";
/// let mut config = harness::kube::access::parse(text, "example").unwrap();
/// harness::kube::access::point_at(&mut config, "https://127.0.0.1:40123", Some("grey-area"), "example").unwrap();
/// assert_eq!(config["clusters"][0]["cluster"]["server"], "https://127.0.0.1:40123");
/// assert_eq!(config["clusters"][0]["cluster"]["tls-server-name"], "grey-area");
/// ```
pub fn point_at(
    config: &mut Value,
    server: &str,
    tls_server_name: Option<&str>,
    origin: &str,
) -> Result<(), KubeError> {
    let index = current_cluster(config, origin)?;
    let cluster = &mut config["clusters"][index]["cluster"];
    if !cluster.is_object() {
        *cluster = Value::Object(Default::default());
    }
    cluster["server"] = Value::String(server.into());
    match tls_server_name {
        Some(name) => cluster["tls-server-name"] = Value::String(name.into()),
        None => {
            if let Some(map) = cluster.as_object_mut() {
                map.remove("tls-server-name");
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Inline {
    /// The file's bytes go into a `*-data` field, base64-encoded.
    Base64,
    /// The file's text (a token) goes into a plain field.
    Text,
}

/// A field of the kubeconfig that names a file on the machine it came from.
#[derive(Debug, Clone, PartialEq)]
struct FileReference {
    list: &'static str,
    index: usize,
    inner: &'static str,
    field: &'static str,
    data_field: &'static str,
    kind: Inline,
    path: String,
}

impl FileReference {
    fn inline(&self, config: &mut Value, content: &str) {
        let entry = &mut config[self.list][self.index][self.inner];
        if let Some(map) = entry.as_object_mut() {
            map.remove(self.field);
            map.insert(self.data_field.into(), Value::String(content.into()));
        }
    }
}

const REFERENCES: [(&str, &str, &str, &str, Inline); 4] = [
    (
        "clusters",
        "cluster",
        "certificate-authority",
        "certificate-authority-data",
        Inline::Base64,
    ),
    (
        "users",
        "user",
        "client-certificate",
        "client-certificate-data",
        Inline::Base64,
    ),
    (
        "users",
        "user",
        "client-key",
        "client-key-data",
        Inline::Base64,
    ),
    ("users", "user", "tokenFile", "token", Inline::Text),
];

/// Every file-path field that has no inline `*-data` counterpart already.
fn file_references(config: &Value) -> Vec<FileReference> {
    let mut found = Vec::new();
    for (list, inner, field, data_field, kind) in REFERENCES {
        let Some(entries) = config[list].as_array() else {
            continue;
        };
        for (index, entry) in entries.iter().enumerate() {
            let entry = &entry[inner];
            if entry[data_field].is_string() {
                continue;
            }
            if let Some(path) = entry[field].as_str() {
                found.push(FileReference {
                    list,
                    index,
                    inner,
                    field,
                    data_field,
                    kind,
                    path: path.to_string(),
                });
            }
        }
    }
    found
}

/// Kubeconfig paths are relative to the kubeconfig's own directory.
fn resolve(base: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{path}", base.trim_end_matches('/'))
    }
}

/// Writes `config` to `path` (mode 0600: it holds the admin's credentials), atomically so a
/// concurrent `labtest kubectl` never reads half a file.
///
/// # Errors
/// [`KubeError::Io`].
pub fn write_kubeconfig(config: &Value, path: &Path) -> Result<(), KubeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |context: &str, source| KubeError::Io {
        context: context.into(),
        path: path.to_path_buf(),
        source,
    };
    let text = serde_json::to_string_pretty(config)
        .map_err(|e| io("serializing kubeconfig for", std::io::Error::other(e)))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("writing kubeconfig", e))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.write_all(b"\n"))
        .map_err(|e| io("writing kubeconfig", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("renaming into place kubeconfig", e))
}

/// Builds a client from a parsed kubeconfig, with labtest's request deadlines.
///
/// # Errors
/// [`KubeError::BadKubeconfig`] when kube-rs cannot use it (no server, unreadable CA...);
/// [`KubeError::Client`] when the TLS stack refuses it.
pub async fn client_from(config: &Value, origin: &str) -> Result<Client, KubeError> {
    let bad = |seen: String| KubeError::BadKubeconfig {
        origin: origin.into(),
        expected: "a kubeconfig kube-rs can use".into(),
        seen,
    };
    let typed: Kubeconfig =
        serde_json::from_value(config.clone()).map_err(|e| bad(e.to_string()))?;
    let mut config = Config::from_custom_kubeconfig(typed, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(REQUEST_TIMEOUT);
    // Without this a pooled connection's idle time counts against the next response's timeout.
    config.reset_reader_on_write = true;
    Client::try_from(config).map_err(|source| KubeError::Client {
        origin: origin.into(),
        source: Box::new(source),
    })
}

/// The apiserver's version, parsed for comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    /// The major version (1).
    pub major: u32,
    /// The minor version (20 for v1.20.2): what API availability depends on.
    pub minor: u32,
    /// As the server says it, e.g. `v1.20.2`.
    pub git_version: String,
}

impl ServerVersion {
    /// Parses `/version`'s `major` and `minor`; providers append `+` (`"20+"`), which is ignored.
    pub fn parse(major: &str, minor: &str, git_version: &str) -> Option<Self> {
        let number = |s: &str| -> Option<u32> {
            let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        Some(Self {
            major: number(major)?,
            minor: number(minor)?,
            git_version: git_version.to_string(),
        })
    }

    /// True when the server is at least `major.minor`.
    ///
    /// # Usage
    /// ```
    /// let v = harness::kube::ServerVersion::parse("1", "20+", "v1.20.2").unwrap();
    /// assert!(v.at_least(1, 20) && !v.at_least(1, 21));
    /// ```
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// Refuses an API the server is too old for, e.g. `require(1, 21, "batch/v1 CronJob")`:
    /// k8s-openapi models 1.33 at the oldest, so requests for newer APIs compile fine and fail
    /// only at run time with a bare 404 - this says why instead.
    ///
    /// # Errors
    /// [`KubeError::Unsupported`].
    pub fn require(&self, major: u32, minor: u32, what: &str) -> Result<(), KubeError> {
        if self.at_least(major, minor) {
            Ok(())
        } else {
            Err(KubeError::Unsupported {
                what: what.into(),
                needs: format!("{major}.{minor}"),
                seen: self.git_version.clone(),
            })
        }
    }
}

/// Asks the apiserver for its version.
///
/// # Errors
/// [`KubeError::Api`] when it cannot be asked; [`KubeError::BadKubeconfig`] never;
/// [`KubeError::Unsupported`] when the answer has no numeric major/minor.
pub async fn apiserver_version(client: &Client) -> Result<ServerVersion, KubeError> {
    let info = client
        .apiserver_version()
        .await
        .map_err(|e| KubeError::api("GET /version", e))?;
    ServerVersion::parse(&info.major, &info.minor, &info.git_version).ok_or_else(|| {
        KubeError::Unsupported {
            what: "labtest".into(),
            needs: "a /version with numeric major and minor".into(),
            seen: format!(
                "major {:?} minor {:?} ({})",
                info.major, info.minor, info.git_version
            ),
        }
    })
}

/// One `GET /readyz?verbose`: `Ok` when ready, else the failing checks (or the error) in one line.
pub(crate) async fn readyz(client: &Client) -> Result<(), String> {
    let request = http::Request::get("/readyz?verbose")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match client.request_text(request).await {
        Ok(_) => Ok(()),
        Err(::kube::Error::Api(status)) => {
            let failing = failing_checks(&status.message);
            Err(if failing.is_empty() {
                format!("HTTP {}: {}", status.code, status.message.trim())
            } else {
                format!("HTTP {}: {}", status.code, failing.join(", "))
            })
        }
        Err(other) => Err(brief(&other)),
    }
}

/// The `[-]name failed: reason` lines of a verbose /readyz or /healthz answer.
fn failing_checks(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("[-]"))
        .map(|rest| rest.trim().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NIXOS_STYLE: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    certificate-authority: /var/lib/kubernetes/secrets/ca.pem
    server: https://grey-area:443
users:
- name: cluster-admin
  user:
    client-certificate: secrets/cluster-admin.pem
    client-key: /var/lib/kubernetes/secrets/cluster-admin-key.pem
contexts:
- context:
    cluster: local
    user: cluster-admin
  name: local
current-context: local
"#;

    #[test]
    fn file_references_are_found_and_inlined() {
        let mut config = parse(NIXOS_STYLE, "test").unwrap();
        let refs = file_references(&config);
        let paths: Vec<&str> = refs.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/var/lib/kubernetes/secrets/ca.pem",
                "secrets/cluster-admin.pem",
                "/var/lib/kubernetes/secrets/cluster-admin-key.pem"
            ]
        );
        assert_eq!(
            resolve("/etc/kubernetes", "secrets/cluster-admin.pem"),
            "/etc/kubernetes/secrets/cluster-admin.pem"
        );
        for r in &refs {
            r.inline(&mut config, "QUJD");
        }
        assert!(file_references(&config).is_empty());
        let user = &config["users"][0]["user"];
        assert_eq!(user["client-key-data"], "QUJD");
        assert!(user.get("client-key").is_none());
        // What we write, kube-rs reads back.
        let text = serde_json::to_string(&config).unwrap();
        let again = parse(&text, "round trip").unwrap();
        assert_eq!(
            again["clusters"][0]["cluster"]["certificate-authority-data"],
            "QUJD"
        );
    }

    #[test]
    fn point_at_rewrites_the_current_clusters_server() {
        let mut config = parse(NIXOS_STYLE, "test").unwrap();
        point_at(
            &mut config,
            "https://127.0.0.1:4443",
            Some("grey-area"),
            "test",
        )
        .unwrap();
        let cluster = &config["clusters"][0]["cluster"];
        assert_eq!(cluster["server"], "https://127.0.0.1:4443");
        assert_eq!(cluster["tls-server-name"], "grey-area");
        point_at(&mut config, "https://127.0.0.1:4443", None, "test").unwrap();
        assert!(config["clusters"][0]["cluster"]
            .get("tls-server-name")
            .is_none());
    }

    #[test]
    fn ambiguous_or_dangling_contexts_are_refused() {
        let two = "clusters:\n- name: a\n  cluster: {server: https://a}\n- name: b\n  cluster: {server: https://b}\n";
        let mut config = parse(two, "two").unwrap();
        let err = point_at(&mut config, "https://x", None, "two").unwrap_err();
        assert!(err.to_string().contains("exactly one cluster"), "{err}");
        let dangling =
            "current-context: gone\nclusters:\n- name: a\n  cluster: {server: https://a}\n";
        let mut config = parse(dangling, "dangling").unwrap();
        let err = point_at(&mut config, "https://x", None, "dangling").unwrap_err();
        assert!(err.to_string().contains("\"gone\""), "{err}");
    }

    #[test]
    fn readyz_failures_are_picked_out() {
        let text = "[+]ping ok\n[-]etcd failed: reason withheld\n[+]log ok\n[-]poststarthook/rbac/bootstrap-roles failed: not finished\nreadyz check failed";
        assert_eq!(
            failing_checks(text),
            [
                "etcd failed: reason withheld",
                "poststarthook/rbac/bootstrap-roles failed: not finished"
            ]
        );
    }

    #[test]
    fn versions_compare_and_gate() {
        let v = ServerVersion::parse("1", "20", "v1.20.2").unwrap();
        assert!(v.at_least(1, 19));
        let err = v.require(1, 21, "batch/v1 CronJob").unwrap_err();
        assert_eq!(
            err.to_string(),
            "batch/v1 CronJob needs Kubernetes >= 1.21; the apiserver is v1.20.2"
        );
        assert!(ServerVersion::parse("", "20", "?").is_none());
    }
}
