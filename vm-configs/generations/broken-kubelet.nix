# A bad change for limiting-factor: the kubelet is given a flag it does not know, so it exits at
# once with "unknown flag" (kubelet.nix splices extraOpts into ExecStart). flake.nix builds it on
# top of ./node-label.nix, so switching node-label -> broken-kubelet changes the kubelet only and
# keeps the node label. extraOpts is `separatedString " "` (kubelet.nix), so this flag joins
# node-label's --node-labels instead of replacing it (common.nix sets extraOpts from nodeLabels).
#
# kubelet.nix keeps Restart=on-failure with StartLimitIntervalSec=0, so on its own the unit would
# cycle through "activating (auto-restart)" forever and never read `failed`. For this generation
# only (the kubelet cannot start in it anyway) a start limit makes the failure visible the way an
# operator sees it: ActiveState=failed, listed by `systemctl --failed`. Rolling back restores the
# unlimited unit, which systemd re-reads on the switch's daemon-reload.
{ lib, ... }:
{
  services.kubernetes.kubelet.extraOpts = "--labtest-rejected-flag=broken-kubelet";
  systemd.services.kubelet.unitConfig = {
    StartLimitIntervalSec = lib.mkForce 600;
    StartLimitBurst = 3;
  };
}
