# limiting-factor: a Kubernetes worker node. It joins the cluster once, with the master's token:
#   ssh grey-area cat /var/lib/cfssl/apitoken.secret | ssh limiting-factor nixos-kubernetes-node-join
# (nixos/modules/services/cluster/kubernetes/pki.nix; the harness does the same over its channel).
# Hardware specifics are the owner's: see vm-configs/README.md.
{ ... }:
{
  imports = [ ./common.nix ];

  networking.hostName = "limiting-factor";

  services.kubernetes.roles = [ "node" ];
}
