//! SSH into a lab's machines (`labtest ssh`, `labtest journal`): a real OpenSSH session through
//! the machine's host port forward on 127.0.0.1, as the lab's `[ssh]` user, with an ed25519 key
//! made for this lab and kept in its state dir (gone with the lab; never the user's own keys).
//!
//! The public key is installed over the guest channel each time access is asked for, not baked
//! into any image: a lab restored from a snapshot saved by another lab (with another key) lets
//! this lab's key in all the same. The machine's host key is read over the guest channel too - a
//! path the harness already trusts - into a known-hosts file of the lab's, so even the first
//! connection is verified (`StrictHostKeyChecking=yes`) instead of trusted on first use.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::{Lab, LabError};
use crate::vm::channel::{ansi_c_quote, sh_quote};

/// What is missing for an SSH session, said so a user knows what to do.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The lab's `lab.toml` has no `[ssh]`: its machines run no sshd.
    #[error("lab {lab} runs no SSH server (its lab.toml has no [ssh]); use `labtest exec MACHINE -- CMD` instead")]
    NotConfigured {
        /// The lab's name.
        lab: String,
    },
    /// The machine has no host port forward to sshd's guest port (it was booted without one).
    #[error("{machine} forwards no host port to sshd's guest port {port}")]
    NoForward {
        /// The machine.
        machine: String,
        /// sshd's port in the guest.
        port: u16,
    },
    /// The machine runs no sshd, or sshd does not answer.
    #[error("{machine} has no SSH server answering: {why}")]
    NoServer {
        /// The machine.
        machine: String,
        /// What was seen.
        why: String,
    },
    /// The lab key could not be made (no `ssh-keygen` on the host, or it failed).
    #[error("could not make the lab's SSH key in {dir}: {why}")]
    Key {
        /// The lab's ssh dir.
        dir: PathBuf,
        /// What went wrong.
        why: String,
    },
}

/// How to reach one machine's sshd: everything `ssh` needs, and nothing of the user's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshAccess {
    /// The machine; also the host key's alias in `known_hosts`.
    pub machine: String,
    /// The user to log in as.
    pub user: String,
    /// The host port on 127.0.0.1 forwarded to the machine's sshd.
    pub port: u16,
    /// The lab's private key.
    pub key: PathBuf,
    /// A known-hosts file holding this machine's host key, read over the guest channel.
    pub known_hosts: PathBuf,
}

/// How long a machine may take to answer the key install (one small guest command) and sshd's
/// banner: seconds on a loaded TCG host; a guest that takes longer is not one to open a
/// session on.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
const BANNER_TIMEOUT: Duration = Duration::from_secs(30);

/// The host key type the harness reads and pins: both labs' sshd make an ed25519 key at first
/// start (nixpkgs' sshd.nix `hostKeys`; the fixture's sshd.service).
const HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key.pub";

impl SshAccess {
    /// `ssh`'s arguments: an interactive session when `remote` is empty, else one command. One
    /// word is a shell command as it stands (`labtest ssh m -- 'ls | wc -l'`), several are
    /// quoted word by word, as `labtest exec` does. `-F /dev/null` keeps the user's and the
    /// system's ssh config out, `IdentitiesOnly` + `IdentityAgent=none` their keys and agent,
    /// and the lab's known-hosts file their known hosts.
    pub fn ssh_args(&self, remote: &[String]) -> Vec<String> {
        let mut args: Vec<String> = vec!["-F".into(), "/dev/null".into()];
        let options = [
            format!("IdentityFile={}", self.key.display()),
            "IdentitiesOnly=yes".into(),
            "IdentityAgent=none".into(),
            "PreferredAuthentications=publickey".into(),
            "PasswordAuthentication=no".into(),
            "KbdInteractiveAuthentication=no".into(),
            "BatchMode=yes".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "GlobalKnownHostsFile=/dev/null".into(),
            "StrictHostKeyChecking=yes".into(),
            format!("HostKeyAlias={}", self.machine),
            // Bounded: a connection that cannot be made, or a guest that stops answering
            // (frozen, crashed), ends the session within about a minute, with ssh's message.
            "ConnectTimeout=30".into(),
            "ServerAliveInterval=15".into(),
            "ServerAliveCountMax=4".into(),
            "LogLevel=ERROR".into(),
        ];
        for option in options {
            args.push("-o".into());
            args.push(option);
        }
        args.extend([
            "-p".into(),
            self.port.to_string(),
            "-l".into(),
            self.user.clone(),
            // Everything after the destination is the remote command, never an ssh option.
            "--".into(),
            "127.0.0.1".into(),
        ]);
        match remote {
            [] => {}
            [one] => args.push(one.clone()),
            words => args.push(
                words
                    .iter()
                    .map(|w| shell_quote(w))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        }
        args
    }
}

/// `journalctl` as an admin runs it on the machine: one unit's journal (or the whole journal),
/// followed or not; never a pager, since ssh gives it no terminal.
pub fn journal_command(unit: Option<&str>, follow: bool) -> Vec<String> {
    let mut command = vec!["journalctl".to_string(), "--no-pager".to_string()];
    if let Some(unit) = unit {
        command.push("--unit".into());
        command.push(unit.to_string());
    }
    if follow {
        command.push("--follow".into());
    }
    command
}

/// One word for the remote POSIX shell, as it stands when it needs no quoting (readable in
/// `ps` and sshd's logs).
fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        sh_quote(word)
    }
}

/// The guest command that lets `key` in for `user` and prints the host key: idempotent, and
/// with sshd's StrictModes in mind (the directory 0700, the file 0600, both the user's).
/// Exit 3: no such user; 4: no host key, i.e. sshd never started on this machine.
fn install_command(user: &str, key: &str) -> String {
    format!(
        "u={user}; key={key}; eval \"h=~$u\"; \
         case $h in /*) ;; *) echo \"no user $u\" >&2; exit 3 ;; esac; \
         [ -s {HOST_KEY} ] || {{ echo 'no {HOST_KEY}: sshd has never started here' >&2; exit 4; }}; \
         mkdir -p \"$h/.ssh\" && chmod 0700 \"$h/.ssh\" && touch \"$h/.ssh/authorized_keys\" \
         && chmod 0600 \"$h/.ssh/authorized_keys\" && chown \"$u\" \"$h/.ssh\" \"$h/.ssh/authorized_keys\" \
         && {{ grep -qxF \"$key\" \"$h/.ssh/authorized_keys\" || printf '%s\\n' \"$key\" >>\"$h/.ssh/authorized_keys\"; }} \
         && cat {HOST_KEY}",
        key = ansi_c_quote(key),
    )
}

/// The lab key pair in `dir`, made on first use with the host's `ssh-keygen`. Made under a
/// temporary name and renamed, so a key that exists is whole.
async fn lab_key(dir: &Path, comment: &str) -> Result<(PathBuf, String), SshError> {
    let key = dir.join("id_ed25519");
    let public = dir.join("id_ed25519.pub");
    let fail = |why: String| SshError::Key {
        dir: dir.to_path_buf(),
        why,
    };
    if !key.exists() {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        let tmp = dir.join("id_ed25519.new");
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(tmp.with_extension("new.pub"));
        let keygen = tokio::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(&tmp)
            .stdin(std::process::Stdio::null())
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), keygen)
            .await
            .map_err(|_| fail("ssh-keygen did not finish within 30 s".into()))?
            .map_err(|e| {
                fail(format!(
                    "could not run ssh-keygen ({e}); Debian: apt-get install openssh-client"
                ))
            })?;
        if !out.status.success() {
            return Err(fail(format!(
                "ssh-keygen {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        std::fs::rename(tmp.with_extension("new.pub"), &public)
            .and_then(|()| std::fs::rename(&tmp, &key))
            .map_err(|e| fail(e.to_string()))?;
    }
    let text = std::fs::read_to_string(&public).map_err(|e| fail(e.to_string()))?;
    Ok((key, text.trim().to_string()))
}

/// Reads sshd's identification line through the forward: QEMU accepts a connection on the
/// host side whether or not anything listens in the guest, so only the banner tells.
async fn banner(port: u16) -> Result<String, String> {
    let read = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connecting to 127.0.0.1:{port}: {e}"))?;
        let mut buf = vec![0u8; 256];
        let mut got = 0;
        while got < buf.len() && !buf[..got].contains(&b'\n') {
            match stream.read(&mut buf[got..]).await {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return Err(format!("reading from 127.0.0.1:{port}: {e}")),
            }
        }
        Ok(String::from_utf8_lossy(&buf[..got]).trim().to_string())
    };
    let line = tokio::time::timeout(BANNER_TIMEOUT, read)
        .await
        .map_err(|_| {
            format!(
                "no SSH banner through 127.0.0.1:{port} within {}s",
                BANNER_TIMEOUT.as_secs()
            )
        })??;
    if line.starts_with("SSH-") {
        Ok(line)
    } else if line.is_empty() {
        Err(format!(
            "nothing listens on its SSH port (the connection through 127.0.0.1:{port} closed without a banner)"
        ))
    } else {
        Err(format!(
            "127.0.0.1:{port} answered {line:?}, not an SSH banner"
        ))
    }
}

impl Lab {
    /// Everything needed to `ssh` into `machine`: the lab key (made on first use in the
    /// lab's state dir) let in for the `[ssh]` user over the guest channel, the machine's host
    /// key pinned in a known-hosts file of the lab's, and sshd's banner seen through the forward.
    ///
    /// # Errors
    /// [`LabError::Ssh`] when the lab runs no sshd, the machine's sshd never started or does not
    /// answer, or no key could be made; [`LabError::Vm`] when the guest channel fails (a frozen
    /// or crashed machine says so).
    pub async fn ssh_access(&self, machine: &str) -> Result<SshAccess, LabError> {
        let Some(ssh) = &self.spec.ssh else {
            return Err(SshError::NotConfigured {
                lab: self.spec.name.clone(),
            }
            .into());
        };
        let guest = self.machine(machine)?;
        let port = guest
            .host_port(ssh.port)
            .ok_or_else(|| SshError::NoForward {
                machine: machine.to_string(),
                port: ssh.port,
            })?;
        let dir = self
            .state_dir()
            .ok_or_else(|| SshError::Key {
                dir: PathBuf::from("(no state dir)"),
                why: "the lab is torn down".into(),
            })?
            .join("ssh");
        let (key, public) = {
            // One key per lab, whoever asks first makes it.
            let _made = self.ssh_key.lock().await;
            lab_key(&dir, &format!("labtest@{}", self.spec.name)).await?
        };
        let out = guest
            .exec(&install_command(&ssh.user, &public), ANSWER_TIMEOUT)
            .await?;
        let no_server = |why: String| SshError::NoServer {
            machine: machine.to_string(),
            why,
        };
        if out.status != 0 {
            return Err(no_server(format!(
                "letting the lab key in for {} exited {}: {}",
                ssh.user,
                out.status,
                out.stderr_str().trim()
            ))
            .into());
        }
        let host_key = out.stdout_str();
        let mut fields = host_key.split_whitespace();
        let (Some(kind), Some(base64)) = (fields.next(), fields.next()) else {
            return Err(no_server(format!("{HOST_KEY} holds no key: {host_key:?}")).into());
        };
        let known_hosts = dir.join(format!("known_hosts.{machine}"));
        std::fs::write(&known_hosts, format!("{machine} {kind} {base64}\n")).map_err(|e| {
            SshError::Key {
                dir: dir.clone(),
                why: format!("writing {}: {e}", known_hosts.display()),
            }
        })?;
        banner(port).await.map_err(no_server)?;
        Ok(SshAccess {
            machine: machine.to_string(),
            user: ssh.user.clone(),
            port,
            key,
            known_hosts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> SshAccess {
        SshAccess {
            machine: "grey-area".into(),
            user: "root".into(),
            port: 40022,
            key: "/tmp/lab/ssh/id_ed25519".into(),
            known_hosts: "/tmp/lab/ssh/known_hosts.grey-area".into(),
        }
    }

    fn option(args: &[String], name: &str) -> Option<String> {
        args.windows(2)
            .find(|w| w[0] == "-o" && w[1].starts_with(&format!("{name}=")))
            .map(|w| w[1][name.len() + 1..].to_string())
    }

    /// Only the lab's key, file and known hosts; no config, agent or password of the user's.
    #[test]
    fn ssh_uses_only_what_the_lab_owns() {
        let args = access().ssh_args(&[]);
        assert_eq!(&args[..2], ["-F", "/dev/null"]);
        for (name, want) in [
            ("IdentityFile", "/tmp/lab/ssh/id_ed25519"),
            ("IdentitiesOnly", "yes"),
            ("IdentityAgent", "none"),
            ("PasswordAuthentication", "no"),
            ("KbdInteractiveAuthentication", "no"),
            ("UserKnownHostsFile", "/tmp/lab/ssh/known_hosts.grey-area"),
            ("GlobalKnownHostsFile", "/dev/null"),
            ("StrictHostKeyChecking", "yes"),
            ("HostKeyAlias", "grey-area"),
        ] {
            assert_eq!(
                option(&args, name).as_deref(),
                Some(want),
                "{name} in {args:?}"
            );
        }
        let tail: Vec<&str> = args[args.len() - 6..].iter().map(String::as_str).collect();
        assert_eq!(tail, ["-p", "40022", "-l", "root", "--", "127.0.0.1"]);
    }

    /// One word is a shell command as it stands; several are quoted so the remote shell sees
    /// each word as it was given, as `labtest exec` does.
    #[test]
    fn remote_commands_reach_the_shell_word_for_word() {
        let one = access().ssh_args(&["ls /etc | wc -l".into()]);
        assert_eq!(one.last().map(String::as_str), Some("ls /etc | wc -l"));
        let words: Vec<String> = ["sh", "-c", "echo it's $HOME; exit 7", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let many = access().ssh_args(&words);
        assert_eq!(
            many.last().map(String::as_str),
            Some(r#"sh -c 'echo it'\''s $HOME; exit 7' ''"#)
        );
        assert_eq!(many[many.len() - 2], "127.0.0.1");
    }

    #[test]
    fn the_journal_is_read_as_an_admin_would() {
        assert_eq!(journal_command(None, false), ["journalctl", "--no-pager"]);
        assert_eq!(
            journal_command(Some("kubelet.service"), true),
            [
                "journalctl",
                "--no-pager",
                "--unit",
                "kubelet.service",
                "--follow"
            ]
        );
    }

    /// The install command is one shell line with the key quoted, whatever the key's comment
    /// holds, and says which exit means what.
    #[test]
    fn the_install_command_quotes_the_key() {
        let line = install_command("root", "ssh-ed25519 AAAA labtest@it's");
        assert!(
            line.contains(r"key=$'ssh-ed25519 AAAA labtest@it\'s'"),
            "{line}"
        );
        assert!(line.contains("exit 3") && line.contains("exit 4"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    /// A port where something answers that is not sshd, and one where nothing does.
    #[tokio::test]
    async fn only_an_ssh_banner_counts_as_an_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for reply in [
                &b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n"[..],
                b"",
                b"HTTP/1.1 400\r\n",
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                s.write_all(reply).await.unwrap();
            }
        });
        assert_eq!(banner(port).await.unwrap(), "SSH-2.0-OpenSSH_9.2p1 Debian");
        let closed = banner(port).await.unwrap_err();
        assert!(
            closed.contains("nothing listens on its SSH port"),
            "{closed}"
        );
        let other = banner(port).await.unwrap_err();
        assert!(other.contains("not an SSH banner"), "{other}");
        server.await.unwrap();
    }
}
