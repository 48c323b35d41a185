# The lab's cluster network as plain data, shared by the machine modules and the VM overlay.
# It MUST agree with lab.toml at the repository root and with the harness's hub (the fixture lab
# uses the same addresses), so there is exactly one place to change it on the Nix side.
{
  cidr = "10.77.0.0/24";
  prefixLength = 24;
  # Nobody owns the gateway: in the harness's hub stray packets die there. It only exists so that
  # the kernel has a route for Kubernetes service IPs before kube-proxy's DNAT rewrites them.
  gateway = "10.77.0.1";
  master = "grey-area";
  apiserverPort = 443;
  # Both clear of QEMU user networking (10.0.2.0/24) and of the cluster subnet.
  podCidr = "10.244.0.0/16";
  serviceCidr = "10.96.0.0/16";
  machines = {
    grey-area = {
      address = "10.77.0.10";
      roles = [ "master" "node" ];
    };
    congenital-optimist = {
      address = "10.77.0.11";
      roles = [ "node" ];
    };
    limiting-factor = {
      address = "10.77.0.12";
      roles = [ "node" ];
    };
  };
}
