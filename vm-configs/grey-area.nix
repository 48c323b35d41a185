# grey-area: the Kubernetes master (apiserver, etcd, cfssl, scheduler, controller-manager) that is
# also a schedulable node, with nginx beside Kubernetes as on the real machine.
# Hardware specifics (disks, boot loader, the real cluster NIC via labtest.clusterInterface) are
# the owner's: see vm-configs/README.md.
{ pkgs, ... }:
let
  services = builtins.fromJSON (builtins.readFile ./services.json);
in
{
  imports = [ ./common.nix ];

  networking.hostName = "grey-area";

  # nixos/modules/services/cluster/kubernetes/default.nix: "master" enables etcd, apiserver,
  # scheduler, controller-manager, addon-manager; "node" adds kubelet and kube-proxy, and without
  # a master-only role list the kubelet gets no NoSchedule taint.
  services.kubernetes.roles = [
    "master"
    "node"
  ];

  # The page and port both labs serve (./services.json; the fixture lab's grey-area serves the
  # same with Debian's nginx, tests/nixos_lab_files.rs pins the pair).
  services.nginx = {
    enable = true;
    # nixpkgs' services/web-servers/nginx/default.nix: the port a virtual host without
    # listen.port gets (default 80).
    defaultHTTPListenPort = services.nginx.port;
    virtualHosts."grey-area" = {
      default = true;
      root = pkgs.writeTextDir "index.html" services.nginx.page;
    };
  };
  networking.firewall.allowedTCPPorts = [ services.nginx.port ];
}
