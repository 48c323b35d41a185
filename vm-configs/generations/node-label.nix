# A good change for limiting-factor: the Node gets the label labtest.io/generation=node-label
# (kubelet --node-labels for a fresh registration, and the labtest-node-labels reconciler in
# common.nix for the Node that already exists).
{ ... }:
{
  labtest.nodeLabels."labtest.io/generation" = "node-label";
}
