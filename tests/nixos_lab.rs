//! Tier 5: the repository's own NixOS lab, end to end. Needs Nix with flakes (and network for the
//! first `nix build`), nixpkgs and KVM; runs only in the `nixos` nextest profile, which the
//! nightly KVM + Nix workflow uses. Elsewhere the default profile's filter excludes it.
mod support;

use std::time::Duration;

use assert_cmd::Command;

#[test]
fn all_scenarios_pass_on_the_nixos_lab() {
    let report = support::repo_root().join("target/labtest/nixos");
    let out = Command::cargo_bin("labtest")
        .expect("the labtest binary")
        // Forcing KVM makes a machine without working KVM fail loudly instead of crawling.
        .env("LABTEST_ACCEL", "kvm")
        .arg("run")
        .arg("--lab")
        .arg(support::repo_root())
        .arg("--report-dir")
        .arg(&report)
        .timeout(Duration::from_secs(3 * 3600))
        .output()
        .expect("labtest runs");
    assert!(
        out.status.success(),
        "labtest run on the NixOS lab failed ({}); artifacts in {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        report.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
