# PLACEHOLDER HARDWARE - NOT A REAL MACHINE'S DISK LAYOUT.
#
# flake.nix imports this module for a machine only when vm-configs/hardware/<machine>.nix does
# not exist (this repository ships none: disks and boot loader are the lab owner's). It exists so
# that `nixosConfigurations.<machine>` evaluates - `nix flake check` evaluates (it does not build)
# every nixosConfiguration's `config.system.build.toplevel` and requires it to be a derivation
# (checkNixOSConfiguration in Nix's src/nix/flake.cc; only `checks` outputs are built), and
# evaluating the toplevel evaluates the assertions: without a root file system and a GRUB target
# two of them fire:
#   * nixos/modules/system/boot/stage-1.nix (read at NixOS/nixpkgs
#     4c853b32a3f2de2be5dde5482a4f23454701e477): `any (fs: fs.mountPoint == "/") fileSystems`,
#     "The 'fileSystems' option does not specify your root file system." (systemd stage 1,
#     nixos/modules/system/boot/systemd/initrd.nix, asserts the same);
#   * nixos/modules/system/boot/loader/grub/grub.nix (read at NixOS/nixpkgs
#     36bd1a6dbb004e02973208d8099b681c76c2cb4a): `cfg.mirroredBoots != [ ]`, "You must set the
#     option 'boot.loader.grub.devices' or 'boot.loader.grub.mirroredBoots' ...", where
#     mirroredBoots is derived from `devices`, and `devices` from `device` when it is not "".
#     Every device must be "nodev" or an absolute path.
#
# What it sets, and why it never reaches the VMs:
#   * fileSystems."/" on a by-label device nobody has. qemu-vm.nix replaces the whole fileSystems
#     set with mkVMOverride (`fileSystems = mkIf (cfg.fileSystems != { }) (mkVMOverride
#     cfg.fileSystems)`, nixos/modules/virtualisation/qemu-vm.nix at NixOS/nixpkgs
#     00008e8eb762c5def2670c20231de50db9bb75b3), so the VM variant mounts its own disks.
#   * boot.loader.grub.device = "nodev": grub.nix then only writes a menu and installs no GRUB
#     (`grub = if cfg.devices == ["nodev"] then null ...`). `device`, not `devices`, because
#     qemu-vm.nix sets `boot.loader.grub.device = mkVMOverride ...`, which replaces it in the VM
#     (where vm-configs/vm.nix turns GRUB off anyway); a list would be concatenated instead.
#
# A real machine MUST NOT be deployed with this: it would not find its root file system. Put the
# machine's generated hardware-configuration.nix at vm-configs/hardware/<machine>.nix (see
# vm-configs/README.md) and this file is no longer imported for it.
{ lib, options, ... }:
{
  fileSystems."/" = {
    device = "/dev/disk/by-label/labtest-placeholder-root";
    fsType = "ext4";
  };

  boot.loader.grub.device = "nodev";

  # Said wherever the real-machine configuration is evaluated (`nix flake check`,
  # `nixos-rebuild --flake .#<machine>`), not in the VM variant: `virtualisation.useNixStoreImage`
  # is declared only by qemu-vm.nix, which only the vmVariant imports
  # (nixos/modules/virtualisation/build-vm.nix: `extendModules { modules = [ ./qemu-vm.nix ]; }`).
  warnings = lib.optional (!(options.virtualisation ? useNixStoreImage)) ''
    labtest: this configuration uses vm-configs/hardware-placeholder.nix (no
    vm-configs/hardware/<machine>.nix exists): its root file system and boot loader are
    placeholders, fine for `nix flake check` and the VMs, unbootable on a real machine.
  '';
}
