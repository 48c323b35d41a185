{
  description = "labtest's VM-only test lab: two fixture guests, no Kubernetes";
  outputs = { self }: {
    # The run scripts come from prepare.sh (fixtures/guest/mkrunvm.sh); they reference the cached
    # guest image outside the store, which is why this lab builds with sandbox = false.
    packages.x86_64-linux.vm = derivation {
      name = "vm-only-lab-vms";
      system = "x86_64-linux";
      builder = "/bin/sh";
      PATH = "/usr/bin:/bin";
      args = [ "-c" "mkdir -p $out/bin && cp ${./local/bin}/run-*-vm $out/bin/" ];
    };
  };
}
