# labtest's nix-layer fixture: no inputs, builders are the host's /bin/sh (needs `sandbox = false`,
# Debian's Nix has empty sandbox-paths). Every build here is real; nothing is faked but the content.
{
  outputs = { self }:
    let
      system = "x86_64-linux";
      # The host's coreutils: there is no nixpkgs here, and the unsandboxed builder can reach them.
      hostPath = "/usr/bin:/bin";
      # Tests write nonce.nix (a string) into their copy so every run builds afresh: progress can
      # only be seen on derivations that are not in the store yet.
      nonce = if builtins.pathExists ./nonce.nix then import ./nonce.nix else "";
      sh = script: name: env: derivation ({
        inherit name system;
        builder = "/bin/sh";
        args = [ "-c" script ];
        PATH = hostPath;
        inherit nonce;
      } // env);
      # A dependency shared by the generations, so a toplevel's closure has more than one path.
      etc = sh ''echo "labtest fixture etc"; echo fixture > $out'' "labtest-fixture-etc" { };
      toplevel = generation: activationStatus:
        derivation {
          name = "labtest-fixture-system-${generation}";
          inherit system generation activationStatus etc nonce;
          PATH = hostPath;
          builder = "/bin/sh";
          args = [ ./toplevel-builder.sh ];
        };
    in
    {
      packages.${system} = {
        # Two derivations, so progress sees expected = 2 and done climbing to it.
        hello = sh ''echo "building hello on top of $etc"; echo hello > $out'' "labtest-fixture-hello" { inherit etc; };
        # Fails after printing 30 numbered lines: the error must carry only the last 25.
        broken = sh ''i=1; while [ $i -le 30 ]; do echo "broken line $i"; i=$((i+1)); done; exit 3'' "labtest-fixture-broken" { };
        # Outlives any test deadline; the marker in its args lets the test find leftover builders.
        slow = sh ''
          # labtest-fixture-slow-${nonce}
          echo started; while :; do sleep 1; done'' "labtest-fixture-slow" { };
        evalerr = throw "labtest fixture: this attribute fails to evaluate on purpose";
        gen1 = toplevel "1" "0";
        gen2 = toplevel "2" "0";
        # Activates with a failure, as a generation that breaks a service would.
        gen3-broken = toplevel "3" "4";
      };
    };
}
