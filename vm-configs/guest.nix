# The labtest guest channel for the VMs (imported by ./vm.nix only): the same root bash on a
# virtio-serial port as the Debian fixture guests run (./guest/labtest-shell, started per port by
# ./guest/99-labtest-shell.rules), plus a seeded system profile for rebuild/rollback. The harness
# adds the devices (-device virtio-serial-pci,id=ltser and virtserialports labtest.shell /
# labtest.ctl); this module only has to answer on them. Every command the harness runs in a
# guest goes over labtest.shell; labtest.ctl stays free to kill an overrunning one.
{
  config,
  lib,
  pkgs,
  ...
}:
{
  # virtio_console provides /dev/vport*; udev names them /dev/virtio-ports/<name>.
  boot.kernelModules = [ "virtio_console" ];

  # The Debian rule, verbatim: one labtest-shell@<port> instance per labtest.* port.
  services.udev.packages = [
    (pkgs.writeTextDir "lib/udev/rules.d/99-labtest-shell.rules" (
      builtins.readFile ./guest/99-labtest-shell.rules
    ))
  ];

  # Equivalent of guest/labtest-shell@.service, running the same guest/labtest-shell script.
  systemd.services."labtest-shell@" = {
    description = "labtest guest channel on virtio port %I";
    after = [ "systemd-udevd.service" ];
    unitConfig = {
      DefaultDependencies = false;
      StartLimitIntervalSec = 0;
    };
    serviceConfig = {
      # The script's shebang is /bin/bash, which NixOS does not have: run it with bash explicitly.
      # It sets PATH to /run/current-system/sw/bin (bash, coreutils) itself.
      ExecStart = "${pkgs.bash}/bin/bash ${./guest/labtest-shell} %I";
      Restart = "always";
      RestartSec = "100ms";
    };
    # The harness runs switch-to-configuration *through* this shell: restarting or stopping it on a
    # switch would cut the command that performs the switch.
    restartIfChanged = false;
    stopIfChanged = false;
  };

  # No qemu-ga here: the harness never adds the org.qemu.guest_agent.0 port and does not use the
  # agent. (qemu-vm.nix still enables services.qemuGuest by default through
  # virtualisation.qemu.guestAgent.enable; without the port the agent has nothing to talk to.)

  # A direct-boot system.build.vm never creates /nix/var/nix/profiles/system, and rollback needs
  # it. Seed it with the booted system after qemu-vm.nix's own postBootCommands has registered the
  # boot closure (`nix-store --load-db` from regInfo=): hence mkAfter. /run/booted-system is set by
  # stage-2-init.sh just before postBootCommands run. Skipped when the profile already points
  # there, so restarting a machine within a run (`labtest start`, same disk) adds no generation.
  # (The harness gives every VM a fresh disk per run; a disk is only ever reused within one.)
  boot.postBootCommands = lib.mkAfter ''
    booted=$(readlink -f /run/booted-system)
    if [ "$(readlink -f /nix/var/nix/profiles/system 2>/dev/null)" != "$booted" ]; then
      ${config.nix.package.out}/bin/nix-env -p /nix/var/nix/profiles/system --set "$booted"
    fi
  '';
}
