//! The nix layer against the real Nix on this machine (Debian's 2.8 or newer) and the input-less
//! flake in tests/nix-fixture. Only the VM channel is stood in for (`LocalGuest`, below).
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::error::Chain;
use harness::nix::{BuildProgress, Guest, GuestError, GuestOutput, Nix, NixError, SystemProfile};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);

fn nix() -> Nix {
    Nix::find()
        .expect("these tests need Nix on PATH (Debian: apt-get install nix-bin)")
        .for_debian_single_user()
}

/// A copy of the fixture flake outside git (a flake inside a git checkout sees only tracked files)
/// with a fresh nonce, so its derivations are really built in this run.
fn fixture() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nix-fixture");
    std::fs::create_dir_all(dir.path().join("flake")).expect("flake dir");
    for file in ["flake.nix", "toplevel-builder.sh"] {
        std::fs::copy(src.join(file), dir.path().join("flake").join(file))
            .expect("copy fixture flake");
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let nonce = format!("{}-{nanos}", std::process::id());
    std::fs::write(dir.path().join("flake/nonce.nix"), format!("\"{nonce}\"\n"))
        .expect("write nonce");
    let flake = format!("path:{}", dir.path().join("flake").display());
    (dir, flake, nonce)
}

#[tokio::test]
async fn build_reports_progress_and_leaves_out_links() {
    let (dir, flake, _) = fixture();
    let out = dir.path().join("out");
    let mut seen: Vec<BuildProgress> = Vec::new();
    let started = Instant::now();
    let paths = nix()
        .build(&flake, &["hello"], &out, BUILD_TIMEOUT, |p| {
            seen.push(p.clone())
        })
        .await
        .unwrap_or_else(|e| panic!("build failed: {e}"));
    eprintln!(
        "built hello (2 derivations) in {:.2}s with {} progress events",
        started.elapsed().as_secs_f64(),
        seen.len()
    );
    assert_eq!(paths.len(), 1, "one output: {paths:?}");
    assert!(paths[0]
        .to_string_lossy()
        .ends_with("-labtest-fixture-hello"));
    let link = out.join("result-hello");
    assert_eq!(std::fs::read_link(&link).expect("out-link"), paths[0]);

    let expected = seen.iter().map(|p| p.expected).max().unwrap_or(0);
    assert!(
        expected >= 2,
        "expected counts >= 2 (hello + etc): {seen:#?}"
    );
    let last = seen.last().expect("progress events");
    assert_eq!(
        (last.done, last.expected),
        (expected, expected),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|p| !p.running.is_empty()),
        "a running build was reported"
    );
    assert!(
        seen.iter().any(|p| p
            .last_log_line
            .as_deref()
            .is_some_and(|l| l.starts_with("building hello"))),
        "the builder's log line was reported: {seen:#?}"
    );
    let log = std::fs::read_to_string(out.join("nix-build.log")).expect("raw log kept");
    assert!(log.lines().any(|l| l.starts_with("@nix {")));
}

#[tokio::test]
async fn evaluation_error_shows_the_message() {
    let (dir, flake, _) = fixture();
    let err = nix()
        .build(
            &flake,
            &["evalerr"],
            &dir.path().join("out"),
            BUILD_TIMEOUT,
            |_| {},
        )
        .await
        .expect_err("evalerr must not build");
    let NixError::Evaluation {
        message, log_path, ..
    } = &err
    else {
        panic!("expected an evaluation error, got {err:?}");
    };
    assert!(
        message.contains("fails to evaluate on purpose"),
        "{message}"
    );
    assert!(
        !message.contains('\u{1b}'),
        "ANSI codes removed: {message:?}"
    );
    assert!(log_path.exists());
    eprintln!("{err}");
}

#[tokio::test]
async fn failing_derivation_shows_its_log_tail() {
    let (dir, flake, _) = fixture();
    let err = nix()
        .build(
            &flake,
            &["broken"],
            &dir.path().join("out"),
            BUILD_TIMEOUT,
            |_| {},
        )
        .await
        .expect_err("broken must fail");
    let NixError::BuildFailed {
        derivation,
        log_tail,
        ..
    } = &err
    else {
        panic!("expected a build failure, got {err:?}");
    };
    assert!(
        derivation.ends_with("-labtest-fixture-broken.drv"),
        "{derivation}"
    );
    assert_eq!(log_tail.len(), 25, "{log_tail:?}");
    assert_eq!(log_tail.first().map(String::as_str), Some("broken line 6"));
    assert_eq!(log_tail.last().map(String::as_str), Some("broken line 30"));
    assert!(Chain(&err).to_string().contains("broken line 30"));
}

#[tokio::test]
async fn build_past_its_deadline_is_stopped_with_what_was_building() {
    let (dir, flake, nonce) = fixture();
    let timeout = Duration::from_secs(8);
    let started = Instant::now();
    let err = nix()
        .build(&flake, &["slow"], &dir.path().join("out"), timeout, |_| {})
        .await
        .expect_err("slow never finishes");
    let elapsed = started.elapsed();
    let NixError::Timeout { still_building, .. } = &err else {
        panic!("expected a timeout, got {err:?}");
    };
    assert!(
        still_building
            .iter()
            .any(|d| d.ends_with("-labtest-fixture-slow.drv")),
        "{still_building:?}"
    );
    // The deadline plus the grace Nix gets to stop its builders, plus slack for a loaded machine.
    assert!(elapsed < timeout + Duration::from_secs(10), "{elapsed:?}");
    eprintln!("stopped after {:.2}s: {err}", elapsed.as_secs_f64());
    let marker = format!("labtest-fixture-slow-{nonce}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(pid) = process_with(&marker) {
        assert!(
            Instant::now() < deadline,
            "builder {pid} outlived the build"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn process_with(needle: &str) -> Option<String> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.flatten().find_map(|e| {
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains(needle)
            .then(|| e.file_name().to_string_lossy().into_owned())
    })
}

/// TEST DOUBLE for the VM layer's guest channel only: runs each command with bash on this host, as
/// root, with the environment the fixture's `switch-to-configuration` reads. Everything behind it -
/// `nix-store --load-db`, `nix-env` on a profile, the toplevels and their activation - is real.
struct LocalGuest {
    env: Vec<(String, String)>,
}

impl Guest for LocalGuest {
    fn name(&self) -> &str {
        "local-test-double"
    }

    async fn exec(&self, command: &str, timeout: Duration) -> Result<GuestOutput, GuestError> {
        let run = tokio::process::Command::new("bash")
            .args(["-c", command])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| GuestError::Timeout {
                machine: self.name().into(),
                command: command.into(),
                timeout,
            })?
            .map_err(|e| GuestError::Channel {
                machine: self.name().into(),
                message: e.to_string(),
            })?;
        Ok(GuestOutput {
            status: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    async fn copy_in(&self, data: &[u8], guest_path: &str, _: Duration) -> Result<(), GuestError> {
        tokio::fs::write(guest_path, data)
            .await
            .map_err(|e| GuestError::Channel {
                machine: self.name().into(),
                message: format!("writing {guest_path}: {e}"),
            })
    }
}

#[tokio::test]
async fn switch_and_rollback_move_a_real_profile() {
    let (dir, flake, _) = fixture();
    let nix = nix();
    let out = dir.path().join("out");
    let built = nix
        .build(
            &flake,
            &["gen1", "gen2", "gen3-broken"],
            &out,
            BUILD_TIMEOUT,
            |_| {},
        )
        .await
        .unwrap_or_else(|e| panic!("building the generations failed: {e}"));
    let [gen1, gen2, gen3]: [PathBuf; 3] = built.try_into().expect("three toplevels");
    let s = |p: &Path| p.to_string_lossy().into_owned();

    let root = dir.path().join("guest");
    std::fs::create_dir_all(root.join("profiles")).expect("profiles dir");
    let marker = root.join("marker");
    let current_link = root.join("current-system");
    let guest = LocalGuest {
        env: vec![
            ("LABTEST_MARKER".into(), s(&marker)),
            ("LABTEST_CURRENT_SYSTEM".into(), s(&current_link)),
            (
                "NIX_CONFIG".into(),
                "build-users-group =\nsubstituters =".into(),
            ),
        ],
    };
    let profile = SystemProfile::at(&s(&root.join("profiles/system")), &s(&current_link));
    let marker_says = || std::fs::read_to_string(&marker).unwrap_or_default();

    let none = profile
        .current(&guest)
        .await
        .expect("current before any switch");
    assert_eq!((none.profile, none.running), (None, None));

    let started = Instant::now();
    let a = profile
        .switch_to(&nix, &guest, &gen1)
        .await
        .expect("switch to gen1");
    assert!(a.succeeded(), "{a:?}");
    let a = profile
        .switch_to(&nix, &guest, &gen2)
        .await
        .expect("switch to gen2");
    eprintln!("two switches took {:.2}s", started.elapsed().as_secs_f64());
    assert!(
        a.succeeded() && a.stdout.contains("activated generation 2"),
        "{a:?}"
    );
    assert_eq!(marker_says(), "generation 2: switch\n");
    let now = profile.current(&guest).await.expect("current");
    assert_eq!(now.profile.as_deref(), Some(s(&gen2).as_str()));
    assert_eq!(now.running.as_deref(), Some(s(&gen2).as_str()));

    let gens = profile.list_generations(&guest).await.expect("list");
    assert_eq!(gens.iter().map(|g| g.number).collect::<Vec<_>>(), [1, 2]);
    assert!(gens[1].current && !gens[0].current);
    assert_eq!(gens[0].toplevel.as_deref(), Some(s(&gen1).as_str()));

    let started = Instant::now();
    let r = profile.rollback(&guest).await.expect("rollback");
    eprintln!("rollback took {:.2}s", started.elapsed().as_secs_f64());
    assert!(r.succeeded(), "{r:?}");
    assert_eq!(r.toplevel, s(&gen1));
    assert_eq!(marker_says(), "generation 1: switch\n");
    let now = profile.current(&guest).await.expect("current");
    assert_eq!(now.profile.as_deref(), Some(s(&gen1).as_str()));
    assert_eq!(now.running.as_deref(), Some(s(&gen1).as_str()));

    // A generation whose activation fails is reported, not raised, and can be rolled back from.
    let broken = profile
        .switch_to(&nix, &guest, &gen3)
        .await
        .expect("switch to gen3");
    assert_eq!(broken.status, 4, "{broken:?}");
    assert!(broken.stderr.contains("a unit failed"), "{broken:?}");
    let r = profile.rollback(&guest).await.expect("rollback from gen3");
    assert!(r.succeeded(), "{r:?}");
    assert_eq!(
        r.toplevel,
        s(&gen2),
        "nix-env rolls back to the number below 3"
    );
    assert_eq!(marker_says(), "generation 2: switch\n");

    // Scenarios that combine: back on generation 1 with 2 and 3 above it, a switch makes 4, and
    // `nix-env --rollback` from 4 lands on 3 - not on 1, where the machine was before the switch.
    // Going back to a particular generation takes its number.
    let r = profile
        .switch_generation(&guest, 1)
        .await
        .expect("to gen 1");
    assert!(r.succeeded(), "{r:?}");
    assert_eq!(r.toplevel, s(&gen1));
    assert_eq!(
        profile.current_generation(&guest).await.expect("n"),
        Some(1)
    );
    profile
        .switch_to(&nix, &guest, &gen2)
        .await
        .expect("switch to gen2 again");
    assert_eq!(
        profile.current_generation(&guest).await.expect("n"),
        Some(4)
    );
    let r = profile.rollback(&guest).await.expect("rollback from gen4");
    assert_eq!(
        r.toplevel,
        s(&gen3),
        "nix-env --rollback picks the number below"
    );
    let r = profile
        .switch_generation(&guest, 1)
        .await
        .expect("to gen 1");
    assert!(r.succeeded(), "{r:?}");
    assert_eq!(marker_says(), "generation 1: switch\n");
    let err = profile
        .switch_generation(&guest, 9)
        .await
        .expect_err("no generation 9");
    assert!(
        Chain(&err).to_string().contains("--switch-generation 9"),
        "{err}"
    );
}

#[tokio::test]
async fn rollback_without_a_previous_generation_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let guest = LocalGuest { env: Vec::new() };
    let profile = SystemProfile::at(
        &dir.path().join("system").to_string_lossy(),
        &dir.path().join("current").to_string_lossy(),
    );
    let err = profile
        .rollback(&guest)
        .await
        .expect_err("nothing to roll back to");
    let text = Chain(&err).to_string();
    assert!(text.contains("nix-env --rollback"), "{text}");
    eprintln!("{text}");
}
