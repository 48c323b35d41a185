# grey-area: the Kubernetes master (apiserver, etcd, cfssl, scheduler, controller-manager) that is
# also a schedulable node, with nginx beside Kubernetes as on the real machine.
# Hardware specifics (disks, boot loader, the real cluster NIC via labtest.clusterInterface) are
# the owner's: see vm-configs/README.md.
{ pkgs, ... }:
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

  services.nginx = {
    enable = true;
    virtualHosts."grey-area" = {
      default = true;
      root = pkgs.writeTextDir "index.html" "grey-area: nginx beside Kubernetes\n";
    };
  };
  networking.firewall.allowedTCPPorts = [ 80 ];
}
