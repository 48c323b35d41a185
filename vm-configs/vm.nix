# The VM overlay: applied to each machine through virtualisation.vmVariant (common.nix), so it
# shapes `config.system.build.vm` (bin/run-<machine>-vm) and never the real hardware.
# Options below come from nixos/modules/virtualisation/qemu-vm.nix unless stated otherwise.
{
  config,
  lib,
  ...
}:
let
  lab = import ./lab-network.nix;
  me = lab.machines.${config.networking.hostName};
  k8s = config.services.kubernetes;
  isMaster = lib.elem "master" k8s.roles;
  # The settings the fixture lab gets too (fixtures/lab/flake.nix reads the same file; each
  # entry's "why" says what it is for; tests/nixos_lab_files.rs pins the pair). VM-only: they
  # are for TCG and for the scenarios' timings, not for the real machines.
  tuning = builtins.fromJSON (builtins.readFile ./tuning.json);
  # sshd's settings both labs share (fixtures/lab/flake.nix renders the same file into the
  # fixture's sshd_config; tests/nixos_lab_files.rs pins the pair).
  services = builtins.fromJSON (builtins.readFile ./services.json);

  # MAC = 52:54:00:4c + the last two octets of the cluster address in hex (10.77.0.10 -> 00:0a),
  # the scheme the fixture lab and the harness use.
  octets = map lib.toInt (lib.splitString "." me.address);
  hex2 = n: lib.toLower (lib.fixedWidthString 2 "0" (lib.toHexString n));
  mac = "52:54:00:4c:${hex2 (lib.elemAt octets 2)}:${hex2 (lib.elemAt octets 3)}";
in
{
  imports = [ ./guest.nix ];

  virtualisation = {
    # The master runs etcd + the control plane + pods; the nodes only kubelet and pods
    # (nixos/tests/kubernetes/base.nix uses 1536 for every machine).
    memorySize = if isMaster then 3072 else 1536;
    # The master's control plane is the one busy guest once the lab is up; under TCG one vCPU
    # of it was the fixture lab's bottleneck (fixtures/lab/flake.nix), so it gets two.
    cores = if isMaster then 2 else 1;
    # nixos/modules/virtualisation/disk-size-option.nix; only used when the qcow2 is created,
    # which with the harness is every run (it hands each VM a fresh NIX_DISK_IMAGE).
    diskSize = 4096;

    # No 9p anywhere, so the lab can be snapshotted: QEMU refuses savevm/migrate while a 9p
    # (virtio-9p / -virtfs) export is mounted in the guest. qemu-vm.nix (NixOS/nixpkgs
    # 00008e8eb762c5def2670c20231de50db9bb75b3) mounts three 9p shares by default:
    #   * the host store (`nix-store`, mkIf mountHostNixStore). Instead the store comes from an
    #     erofs image: useNixStoreImage builds $TMPDIR/store.img just before QEMU starts, from
    #     closureInfo { rootPaths = [ toplevel regInfo ]; } - regInfo being the closureInfo of
    #     additionalPaths, whose store-paths file references that whole closure, so the image
    #     holds additionalPaths too (the option's own description: "When useNixStoreImage is
    #     set, the closure is copied to the Nix store image"). It is attached as a virtio drive
    #     (label nix-store) and mounted on /nix/.ro-store. mountHostNixStore defaults to
    #     `!useNixStoreImage && !useBootLoader`, i.e. false here; stated so nobody flips it back.
    #   * `xchg` (/tmp/xchg) and `shared` (/tmp/shared, $SHARED_DIR), defined unconditionally in
    #     `virtualisation.sharedDirectories`. mkForce replaces the module's definitions, so no
    #     -virtfs option is generated and virtualisation.fileSystems gets no 9p entry (both are
    #     derived from sharedDirectories; `certs` is only there with useHostCerts, off).
    #     So $SHARED_DIR and /tmp/shared do not exist in these guests: whatever the harness moves
    #     into or out of a guest has to go over the guest channel (vm-configs/guest.nix).
    useNixStoreImage = true;
    mountHostNixStore = false;
    sharedDirectories = lib.mkForce { };
    # The store must stay writable: a rebuild copies closures into the guest store with
    # `nix-store --import` over the guest channel. writableStore defaults to mountHostNixStore
    # (false now), so say it: /nix/store becomes an overlay of the read-only image with
    # /nix/.rw-store/{upper,work} (qemu-vm.nix's `"/nix/store"` fileSystems entry).
    # writableStoreUseTmpfs must be false. Its default (true) mounts /nix/.rw-store as a tmpfs
    # (qemu-vm.nix: `"/nix/.rw-store" = lib.mkIf (cfg.writableStore && cfg.writableStoreUseTmpfs)
    # { fsType = "tmpfs"; ... }`), while the Nix database (/nix/var/nix/db) lives on the qcow2
    # root disk: a closure `labtest rebuild` imports would stay registered as valid but be gone
    # after a power-loss restart or `labtest start`, so the next switch to it finds no
    # bin/switch-to-configuration and a re-import skips it as present. (The tmpfs is also capped
    # at half the guest's RAM.) With false there is no mount for /nix/.rw-store, so upper and work
    # are directories on the root ext4 of NIX_DISK_IMAGE, which persists with the database and is
    # frozen with it by a snapshot; nixos/modules/tasks/filesystems/overlayfs.nix creates them
    # (`mkdir -p` of upperdir and workdir before the mount). The fixture lab's guests keep their
    # upper layer on the root disk the same way (fixtures/guest/build.sh, labtest-guest-setup),
    # and tests/lab_api.rs power-cycles a machine after switching to an imported generation.
    # The closure of additionalPaths is registered at every boot by qemu-vm.nix's
    # `nix-store --load-db` of regInfo (boot.postBootCommands).
    writableStore = true;
    writableStoreUseTmpfs = false;
    # Not 9p, but relevant to snapshots: qemu-vm.nix attaches store.img as a writable raw drive,
    # which a `migrate` to a file accepts but QEMU's internal `savevm` does not (every writable
    # drive must support snapshots, i.e. be qcow2). Use migration for lab snapshots.
    graphics = false;
    # qemu-vm.nix turns this into `restrict=on` on the user-mode netdev: the guest can open no
    # connection through the host, while hostfwd (QEMU_NET_OPTS) keeps working.
    restrictNetwork = true;
    # The cluster NIC comes from the harness's L2 hub. qemu-vm.nix splices networkingOptions
    # unquoted into the run script (`${concatStringsSep " " networkingOptions}`), so the shell
    # expands this at run time: no socket in the environment, no second NIC. Which of the two
    # NICs the kernel calls eth0 depends on the order QEMU puts them on the PCI bus, so neither
    # is named by order: see systemd.network.links below. The netdev id must stay `lab`: the
    # harness cuts links with QMP `set_link lab`.
    qemu.networkingOptions = [
      "\${LABTEST_LAB_SOCKET:+-netdev stream,id=lab,server=off,addr.type=unix,addr.path=$LABTEST_LAB_SOCKET -device virtio-net-pci,netdev=lab,mac=${mac}}"
    ];
  };

  # Both NICs named by MAC address, so the order QEMU creates them in (the user-mode `-net nic`
  # first, today) cannot swap them. .link files are applied by udev whether or not networkd runs
  # (nixos/modules/system/boot/networkd.nix: ".link units are honored by udev, no matter if
  # systemd-networkd is enabled or not"), and `Name=` applies under qemu-vm.nix's
  # usePredictableInterfaceNames = false (net.ifnames=0 only turns NamePolicy= off). Names the
  # kernel never gives (ethN would race with its own naming, systemd.link(5)): `hub0` for the
  # harness's hub NIC (the MAC above), `user0` for QEMU's user-mode NIC, which has no mac= in
  # qemu-vm.nix's networkingOptions and so gets QEMU's first default MAC, 52:54:00:12:34:56
  # (qemu_macaddr_default_if_unset in QEMU's net/net.c; the hub NIC's explicit mac= takes none).
  systemd.network.links = {
    "10-labtest-hub" = {
      matchConfig.MACAddress = mac;
      linkConfig.Name = "hub0";
    };
    "10-labtest-user" = {
      matchConfig.MACAddress = "52:54:00:12:34:56";
      linkConfig.Name = "user0";
    };
  };
  # mkVMOverride (qemu-vm.nix's priority for VM-only values): a machine module may set its real
  # NIC's name for the hardware without clashing with this one.
  labtest.clusterInterface = lib.mkVMOverride "hub0";

  # No DHCP anywhere: QEMU's DHCP would hand out 10.0.2.3 as resolver and 10.0.2.2 as default
  # gateway. user0 gets the address QEMU's hostfwd targets (10.0.2.15); names come from
  # networking.hosts (common.nix), so there is no nameserver at all.
  networking.useDHCP = false;
  networking.interfaces.user0.ipv4.addresses = [
    {
      address = "10.0.2.15";
      prefixLength = 24;
    }
  ];
  networking.nameservers = lib.mkForce [ ];
  # A route for everything (Kubernetes service IPs need one before kube-proxy's DNAT applies) via
  # a gateway nobody has: stray packets die in the harness's hub instead of leaving the host.
  networking.defaultGateway = {
    address = lab.gateway;
    interface = config.labtest.clusterInterface;
  };
  services.resolved.enable = false;

  # qemu-vm.nix appends the toplevel's kernel-params (boot.kernelParams) to the VM's -append.
  boot.kernelParams = tuning.kernelParams;
  # extraOpts are `separatedString " "` in nixpkgs' kubernetes/apiserver.nix and
  # controller-manager.nix (NixOS/nixpkgs 0490065f6ac60793bfb12e110bd6506aaca0e9f5), spliced
  # last into ExecStart, so they merge with any other definition.
  services.kubernetes.apiserver.extraOpts = lib.mkIf isMaster (lib.concatStringsSep " " tuning.apiserverFlags);
  services.kubernetes.controllerManager.extraOpts = lib.mkIf isMaster (
    lib.concatStringsSep " " tuning.controllerManagerFlags
  );
  # nixpkgs' kubernetes/controller-manager.nix and scheduler.nix pass
  # --leader-elect=${boolToString cfg.leaderElect} (default true).
  services.kubernetes.controllerManager.leaderElect = tuning.leaderElect;
  services.kubernetes.scheduler.leaderElect = tuning.leaderElect;
  systemd.services = lib.mkMerge [
    (lib.mkIf isMaster (
      lib.genAttrs [ "etcd" "kube-apiserver" "kube-controller-manager" "kube-scheduler" ] (_: {
        environment = tuning.controlPlaneEnvironment;
      })
    ))
    # Every Go daemon of this machine's Kubernetes gets tuning.json's timer slack (systemd.exec
    # TimerSlackNSec=; the containers containerd starts inherit it). The fixture gives the same
    # six units a drop-in (fixtures/lab/nix/system.sh); flannel, kube-proxy, certmgr and cfssl
    # run only here and get it too. mkIf: a bare definition would create a unit with no
    # ExecStart (as in common.nix).
    (lib.mapAttrs
      (_: enabled: lib.mkIf enabled { serviceConfig.TimerSlackNSec = tuning.timerSlackNSec; })
      {
        containerd = config.virtualisation.containerd.enable;
        kubelet = k8s.kubelet.enable;
        etcd = config.services.etcd.enable;
        kube-apiserver = k8s.apiserver.enable;
        kube-controller-manager = k8s.controllerManager.enable;
        kube-scheduler = k8s.scheduler.enable;
        kube-proxy = k8s.proxy.enable;
        flannel = config.services.flannel.enable;
        certmgr = config.services.certmgr.enable;
        cfssl = config.services.cfssl.enable;
      }
    )
  ];

  # sshd (enabled in common.nix) as the harness reaches it: `labtest ssh` logs in as root with a
  # key made for each lab and installed over the guest channel into /root/.ssh/authorized_keys
  # (nixpkgs' sshd.nix reads it: authorizedKeysInHomedir defaults to true and puts
  # .ssh/authorized_keys into AuthorizedKeysFile), through a free host port on 127.0.0.1 the
  # harness forwards to port 22 with QEMU_NET_OPTS (hostfwd=tcp:127.0.0.1:PORT-:22), like the
  # apiserver's. Not virtualisation.forwardPorts: that bakes one fixed host port into the run
  # script, and two labs restored from one snapshot at once (or a lab beside a user's sshd)
  # would fight over it; the user-mode NIC stays restrictNetwork (restrict=on) either way.
  # openFirewall (default true) opens 22 on user0. No password of any kind: settings from
  # ./services.json (PasswordAuthentication and KbdInteractiveAuthentication off, which the
  # module leaves on; PermitRootLogin its default prohibit-password, stated). VM-only: the real
  # machines' login policy is their owner's (the same settings are a good idea there too).
  # Option names as nixpkgs' services/networking/ssh/sshd.nix has them since `settings`
  # replaced passwordAuthentication & co (read from a stored copy of the current module; the
  # stored NixOS/nixpkgs copies, 408b8b57 and 00976b19, predate `settings`).
  services.openssh = {
    settings = services.sshd;
    authorizedKeysInHomedir = true;
  };

  # Direct kernel boot; `switch-to-configuration switch` must not try to install GRUB.
  boot.loader.grub.enable = false;
  # nixos/modules/system/activation/switchable-system.nix: switch-to-configuration must exist for
  # the rebuild/rollback scenario (it is the default; stated because the scenario depends on it).
  system.switch.enable = true;

  # Nothing in the lab reads the NixOS manual; not building it saves minutes per change.
  documentation.nixos.enable = false;
}
