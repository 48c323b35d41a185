{
  description = "labtest's NixOS home lab: grey-area (Kubernetes master + node), congenital-optimist and limiting-factor (nodes), as real machines and as QEMU VMs";

  # The 26.05 stable channel branch. 26.05 is the newest release: nixpkgs' master carries
  # nixos/doc/manual/release-notes/rl-2611.section.md ("Release 26.11 (2026.11/??)", read at
  # NixOS/nixpkgs 0a442e8199c036981c5f8c61131f360ffdc26376), i.e. 26.11 is still unreleased, and
  # rl-2605.section.md (read at af44875a80f90801a7b456da4d739c8702c9d44d) documents the 26.05
  # changes these modules follow (e.g. addons.dns.coredns -> addons.dns.corednsImage).
  # No flake.lock is committed: none can be made without network. The first successful
  # `nix build` writes one; commit it (see vm-configs/README.md) so every run uses that nixpkgs.
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

      # Per-machine hardware module (disks, boot loader, real NIC names). The lab's owner adds
      # vm-configs/hardware/<machine>.nix (the machine's hardware-configuration.nix, see
      # vm-configs/README.md); until then a clearly named placeholder stands in, so the real-machine
      # configuration evaluates (`nix flake check`) without pretending to know the disks.
      hardware =
        name:
        let
          p = ./vm-configs/hardware + "/${name}.nix";
        in
        if builtins.pathExists p then [ p ] else [ ./vm-configs/hardware-placeholder.nix ];

      mkMachine =
        name: extraModules:
        nixpkgs.lib.nixosSystem {
          modules = [ (./vm-configs + "/${name}.nix") ] ++ hardware name ++ extraModules;
        };

      byName = f: builtins.listToAttrs (map (name: { inherit name; value = f name; }) machines);

      # nixos/modules/virtualisation/build-vm.nix: system.build.vm defaults to the vmVariant's
      # run script (qemu-vm.nix: $out/bin/run-<hostName>-vm).
      vmOf = name: self.nixosConfigurations.${name}.config.system.build.vm;

      # The rebuild generations lab.toml names (packages.x86_64-linux.<machine>-<generation>),
      # per machine: generation name -> the modules that make it.
      generations = {
        limiting-factor = {
          node-label = [ ./vm-configs/generations/node-label.nix ];
          # On top of node-label: the scenario file switches node-label -> broken-kubelet ->
          # rollback, so broken-kubelet must differ from node-label only in its kubelet. Alone it
          # would also drop the node label (the reconciler in common.nix removes labtest.io/
          # labels a generation does not set), and the rollback would test two changes at once.
          broken-kubelet = [
            ./vm-configs/generations/node-label.nix
            ./vm-configs/generations/broken-kubelet.nix
          ];
        };
      };

      # A generation for the rebuild/rollback scenario must be a *VM* toplevel: the VM runs the
      # vmVariant's system, and switching it to a non-VM toplevel would drop the VM's file
      # systems (its store image and writable store overlay) and the labtest guest channel.
      # Each generation is its own nixosSystem evaluation of the machine plus the generation's
      # modules - WITHOUT `preloadGenerations` below, so no generation refers to another one or
      # to the VM that carries it.
      generationToplevel =
        name: modules: (mkMachine name modules).config.virtualisation.vmVariant.system.build.toplevel;

      # The machine's generations go into its VM's store from boot: qemu-vm.nix copies the
      # closure of virtualisation.additionalPaths into the Nix store image (useNixStoreImage,
      # vm-configs/vm.nix) and registers it in the guest's Nix database at boot (regInfo =
      # closureInfo { rootPaths = additionalPaths; }, loaded by `nix-store --load-db` in
      # boot.postBootCommands; nixos/modules/virtualisation/qemu-vm.nix at NixOS/nixpkgs
      # 00008e8eb762c5def2670c20231de50db9bb75b3). No cycle: additionalPaths only shapes the run
      # script and its store image, never system.build.toplevel (qemu-vm.nix passes regInfo on
      # the kernel command line for exactly that reason), and the generations are evaluated
      # without this module.
      preloadGenerations = name: {
        virtualisation.vmVariant.virtualisation.additionalPaths = map (generationToplevel name) (
          builtins.attrValues (generations.${name} or { })
        );
      };

      generationPackages = builtins.concatLists (
        map (
          machine:
          map (generation: {
            name = "${machine}-${generation}";
            value = generationToplevel machine generations.${machine}.${generation};
          }) (builtins.attrNames generations.${machine})
        ) (builtins.attrNames generations)
      );

      pkgs = nixpkgs.legacyPackages.${system};
    in
    {
      nixosConfigurations = byName (name: mkMachine name [ (preloadGenerations name) ]);

      packages.${system} =
        {
          # `nix build .#vm` -> result/bin/run-<machine>-vm for all three (lab.toml vm_attr).
          vm = pkgs.symlinkJoin {
            name = "labtest-home-lab-vms";
            paths = map vmOf machines;
            # Each VM output also has a `system` link to its own toplevel; only one could win.
            postBuild = "rm -f $out/system";
          };
        }
        # limiting-factor-node-label, limiting-factor-broken-kubelet (lab.toml [[generation]] attr)
        // builtins.listToAttrs generationPackages
        // builtins.listToAttrs (
          map (name: {
            name = "${name}-vm";
            value = vmOf name;
          }) machines
        );
    };
}
