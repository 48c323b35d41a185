# TEST DOUBLE of nixpkgs - NOT nixpkgs, and it evaluates no NixOS module.
#
# nixpkgs cannot be fetched on the machines that run `cargo nextest run`, so
# tests/nixos_lab_files.rs evaluates the lab's flake with
#   nix eval --override-input nixpkgs path:<this directory> ...
# to check only the SHAPE of its outputs (the attribute names the harness and lab.toml use) and
# that every module file the flake hands to nixosSystem exists. Nothing here says anything about
# whether the NixOS configurations evaluate or boot; that needs the real nixpkgs (the `nixos`
# nextest profile, on a machine with Nix and network).
{
  description = "TEST DOUBLE of nixpkgs for labtest's flake-shape test (not nixpkgs)";

  outputs =
    { self }:
    let
      testDouble = what: {
        labtestTestDouble = true;
        inherit what;
      };
    in
    {
      lib.nixosSystem =
        args:
        let
          modules = args.modules or [ ];
          paths = builtins.filter builtins.isPath modules;
        in
        {
          labtestTestDouble = true;
          # Module files the flake passed that do not exist (expected: none).
          missingModules = map toString (builtins.filter (p: !builtins.pathExists p) paths);
          moduleFiles = map (p: baseNameOf (toString p)) paths;
          config = {
            system.build.vm = testDouble "system.build.vm";
            virtualisation.vmVariant.system.build.toplevel = testDouble "vmVariant toplevel" // {
              moduleFiles = map (p: baseNameOf (toString p)) paths;
            };
          };
        };

      legacyPackages.x86_64-linux.symlinkJoin =
        args:
        testDouble "symlinkJoin"
        // {
          inherit (args) name;
          pathCount = builtins.length args.paths;
        };
    };
}
