{
  description = "labtest's NixOS home lab: grey-area (Kubernetes master + node), congenital-optimist and limiting-factor (nodes), as real machines and as QEMU VMs";

  # The stable channel branch. No flake.lock is committed (it cannot be made without network);
  # the first `nix build` writes one, which pins nixpkgs from then on.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      system = "x86_64-linux";
      machines = [
        "grey-area"
        "congenital-optimist"
        "limiting-factor"
      ];

      # Optional per-machine hardware module (disks, boot loader, real NIC names). Absent in this
      # repository: the lab's owner adds vm-configs/hardware/<machine>.nix (see vm-configs/README.md).
      hardware =
        name:
        let
          p = ./vm-configs/hardware + "/${name}.nix";
        in
        if builtins.pathExists p then [ p ] else [ ];

      mkMachine =
        name: extraModules:
        nixpkgs.lib.nixosSystem {
          modules = [ (./vm-configs + "/${name}.nix") ] ++ hardware name ++ extraModules;
        };

      byName = f: builtins.listToAttrs (map (name: { inherit name; value = f name; }) machines);

      # nixos/modules/virtualisation/build-vm.nix: system.build.vm defaults to the vmVariant's
      # run script (qemu-vm.nix: $out/bin/run-<hostName>-vm).
      vmOf = name: self.nixosConfigurations.${name}.config.system.build.vm;

      # A new generation for the rebuild/rollback scenario must be a *VM* toplevel: the VM runs the
      # vmVariant's system, and switching it to a non-VM toplevel would drop the 9p store,
      # the VM's file systems and the labtest guest channel.
      vmToplevel =
        name: modules: (mkMachine name modules).config.virtualisation.vmVariant.system.build.toplevel;

      pkgs = nixpkgs.legacyPackages.${system};
    in
    {
      nixosConfigurations = byName (name: mkMachine name [ ]);

      packages.${system} =
        {
          # `nix build .#vm` -> result/bin/run-<machine>-vm for all three (lab.toml vm_attr).
          vm = pkgs.symlinkJoin {
            name = "labtest-home-lab-vms";
            paths = map vmOf machines;
            # Each VM output also has a `system` link to its own toplevel; only one could win.
            postBuild = "rm -f $out/system";
          };

          limiting-factor-node-label = vmToplevel "limiting-factor" [
            ./vm-configs/generations/node-label.nix
          ];
          limiting-factor-broken-kubelet = vmToplevel "limiting-factor" [
            ./vm-configs/generations/broken-kubelet.nix
          ];
        }
        // builtins.listToAttrs (
          map (name: {
            name = "${name}-vm";
            value = vmOf name;
          }) machines
        );
    };
}
