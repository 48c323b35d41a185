# Shared by grey-area, congenital-optimist and limiting-factor, on the real hardware and in the
# VMs alike: Kubernetes with easyCerts and flannel on the cluster network, firewall, ssh.
# Everything that only makes sense in a VM lives in ./vm.nix, applied through
# virtualisation.vmVariant below, so `nixos-rebuild switch` on the real machines never sees it.
#
# Written against the nixpkgs sources (paths relative to the nixpkgs root are cited where a
# value depends on how a module behaves); never booted on the machine that wrote it.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  lab = import ./lab-network.nix;
  hostName = config.networking.hostName;
  me =
    lab.machines.${hostName} or (throw ''
      labtest: networking.hostName = "${hostName}" is not a machine of vm-configs/lab-network.nix
      (expected one of: ${lib.concatStringsSep ", " (lib.attrNames lab.machines)})'');
  masterIp = lab.machines.${lab.master}.address;
  k8s = config.services.kubernetes;
  isMaster = lib.elem "master" k8s.roles;
  iface = config.labtest.clusterInterface;

  # The workload image pods of the scenarios run. Built, never pulled: the guests have no route
  # to any registry. busybox gives `sleep`, `httpd` and `nc`.
  # buildImage (not streamLayeredImage) because kubelet.nix's preStart pipes the image file into
  # `ctr image import` (nixos/modules/services/cluster/kubernetes/kubelet.nix, seedDockerImages).
  workloadImage = pkgs.dockerTools.buildImage {
    name = "labtest/workload";
    tag = "1";
    copyToRoot = pkgs.buildEnv {
      name = "labtest-workload-root";
      paths = [ pkgs.busybox ];
      pathsToLink = [ "/bin" ];
    };
    config.Cmd = [
      "/bin/sleep"
      "86400"
    ];
  };

  # CoreDNS: the Corefile below replaces the DNS addon's own, so it has to serve exactly the ports
  # the addon's Deployment expects - its containerPorts and the HTTP probes (a probe on a port no
  # plugin serves restarts the pod, or keeps it unready, for ever). Read from the Deployment the
  # addon itself renders (services.kubernetes.addonManager.addons.coredns-deploy), so the Corefile
  # follows the pinned nixpkgs whatever its addon does. No cycle: the Corefile only feeds the
  # coredns ConfigMap (coredns-cm), never the Deployment's containers. The fallbacks are what
  # nixos/modules/services/cluster/kubernetes/addons/dns.nix has at NixOS/nixpkgs
  # 136283b55aa0c52938e6d4154521570b391726bf (the only dns.nix stored where this was written;
  # 26.05's corednsImage version could not be read): ports dns 10053, health 10054, metrics
  # 10055; a livenessProbe httpGet /health on 10054; no readinessProbe.
  # Found or null: a Deployment or container renamed in a newer nixpkgs must fail the
  # evaluation (the assertion below), not silently leave the Corefile on the fallback ports.
  corednsDeployment = k8s.addonManager.addons.coredns-deploy or null;
  corednsFound = lib.findFirst (c: (c.name or "") == "coredns") null (
    if corednsDeployment == null then [ ] else corednsDeployment.spec.template.spec.containers or [ ]
  );
  corednsContainer = if corednsFound == null then { } else corednsFound;
  corednsDnsPort = lib.findFirst (p: (p.name or "") == "dns") null (corednsContainer.ports or [ ]);
  corednsPort =
    name: fallback:
    (lib.findFirst (p: (p.name or "") == name) { containerPort = fallback; } (
      corednsContainer.ports or [ ]
    )).containerPort;
  # A probe's port may be a number or the name of a containerPort.
  corednsProbe =
    probe:
    let
      get = corednsContainer.${probe}.httpGet or null;
      port = if get == null then null else get.port or null;
    in
    if get == null then
      null
    else
      {
        path = get.path or "/";
        port = if builtins.isString port then corednsPort port null else port;
      };
  dnsLiveness = corednsProbe "livenessProbe";
  dnsReadiness = corednsProbe "readinessProbe";
  dnsPorts = {
    dns = if corednsDnsPort == null then 10053 else corednsDnsPort.containerPort;
    metrics = corednsPort "metrics" 10055;
    # CoreDNS's health plugin answers /health, its ready plugin /ready (8181 is its default).
    health = if dnsLiveness != null then dnsLiveness.port else 10054;
    ready = if dnsReadiness != null then dnsReadiness.port else null;
  };

  labelArg = lib.concatStringsSep "," (lib.mapAttrsToList (k: v: "${k}=${v}") config.labtest.nodeLabels);

  # The kubelet's own credentials (set by nixos/modules/services/cluster/kubernetes/pki.nix:
  # kubelet.kubeconfig.{certFile,keyFile} = the kubelet-client cert, CN system:node:<name>),
  # rendered with the module's own helper (kubernetes/default.nix, services.kubernetes.lib).
  kubeletKubeconfig = k8s.lib.mkKubeConfig "labtest-node-labels" k8s.kubelet.kubeconfig;
  nodeName = k8s.kubelet.hostname;

  # `--node-labels` only applies when the kubelet *registers* the Node; a kubelet restarted with
  # new labels does not touch an existing Node. So a rebuild that changes labels would be
  # invisible in the cluster. This reconciler makes the labtest.io/ labels on this node equal to
  # labtest.nodeLabels, with the node's own identity (the Node authorizer and the NodeRestriction
  # admission plugin, both on by default in kubernetes/apiserver.nix, let a node relabel itself
  # outside the kubernetes.io/ namespaces).
  reconcileLabels = pkgs.writeShellScript "labtest-node-labels" ''
    set -u
    export KUBECONFIG=${kubeletKubeconfig}
    kubectl=${k8s.package}/bin/kubectl
    want=(${lib.concatStringsSep " " (lib.mapAttrsToList (k: v: lib.escapeShellArg "${k}=${v}") config.labtest.nodeLabels)})
    while :; do
      # Until the node has joined (nodes: nixos-kubernetes-node-join), there is no client cert.
      if [ -s ${toString k8s.kubelet.kubeconfig.certFile} ] \
        && have=$($kubectl get node ${nodeName} \
          -o go-template='{{range $k, $v := .metadata.labels}}{{$k}}{{"\n"}}{{end}}' 2>/dev/null); then
        args=("''${want[@]}")
        for key in $have; do
          case $key in
            labtest.io/*)
              keep=
              for kv in "''${want[@]}"; do [ "''${kv%%=*}" = "$key" ] && keep=1; done
              [ -n "$keep" ] || args+=("$key-")
              ;;
          esac
        done
        if [ ''${#args[@]} -eq 0 ] || $kubectl label node ${nodeName} --overwrite "''${args[@]}"; then
          echo "labtest.io labels of ${nodeName} reconciled: ''${args[*]:-none}"
          exit 0
        fi
      fi
      sleep 10
    done
  '';
in
{
  options.labtest = {
    clusterInterface = lib.mkOption {
      type = lib.types.str;
      default = "eth1";
      description = ''
        The NIC on the cluster network. On the real hardware set it to the real name. The VMs
        name theirs `hub0` by its MAC address (vm.nix), whatever order QEMU creates NICs in.
      '';
    };
    nodeLabels = lib.mkOption {
      type = lib.types.attrsOf lib.types.str;
      default = { };
      example = {
        "labtest.io/generation" = "node-label";
      };
      description = ''
        Node labels under labtest.io/ this machine's Node must carry. Passed to the kubelet with
        --node-labels and reconciled on an already registered Node.
      '';
    };
  };

  config = lib.mkMerge [
    {
      assertions = [
        {
          # The Corefile below is only right if it was derived from the addon's Deployment:
          # assert that it was found (addons/dns.nix names them `coredns-deploy`, container
          # `coredns`, containerPort `dns`), instead of passing on the fallbacks.
          assertion = !k8s.addons.dns.enable || (corednsFound != null && corednsDnsPort != null);
          message = ''
            labtest: services.kubernetes.addons.dns is enabled, but ${
              if corednsDeployment == null then
                "services.kubernetes.addonManager.addons has no coredns-deploy"
              else if corednsFound == null then
                "the coredns-deploy Deployment has no container named coredns"
              else
                "the coredns container has no containerPort named dns"
            }; vm-configs/common.nix derives the Corefile's ports from it. Adapt common.nix to
            this nixpkgs' nixos/modules/services/cluster/kubernetes/addons/dns.nix.
          '';
        }
        {
          # The Corefile's health/ready plugins answer only these paths.
          assertion =
            (dnsLiveness == null || dnsLiveness.path == "/health")
            && (dnsReadiness == null || dnsReadiness.path == "/ready")
            && (dnsLiveness == null || dnsLiveness.port != null)
            && (dnsReadiness == null || dnsReadiness.port != null);
          message = ''
            labtest: the CoreDNS Deployment of services.kubernetes.addons.dns probes
            ${builtins.toJSON { liveness = dnsLiveness; readiness = dnsReadiness; }},
            which the Corefile in vm-configs/common.nix (health on /health, ready on /ready) does
            not serve; adapt it to this nixpkgs' addons/dns.nix.
          '';
        }
        {
          assertion = lib.all (k: lib.hasPrefix "labtest.io/" k) (lib.attrNames config.labtest.nodeLabels);
          message = "labtest.nodeLabels keys must start with labtest.io/ (the reconciler manages only those).";
        }
      ];

      system.stateVersion = lib.mkDefault "26.05";
      nixpkgs.hostPlatform = lib.mkDefault "x86_64-linux";

      # Names come from /etc/hosts on every machine: the lab has no DNS server, and
      # masterAddress must resolve to grey-area's cluster IP everywhere (certmgr reaches cfssl at
      # https://<masterAddress>:8888, kubernetes/pki.nix `remote`).
      networking.hosts = lib.mapAttrs' (name: m: lib.nameValuePair m.address [ name ]) lab.machines;

      # Static address on the cluster NIC, no DHCP there.
      networking.interfaces.${iface} = {
        useDHCP = false;
        ipv4.addresses = [
          {
            inherit (me) address;
            inherit (lab) prefixLength;
          }
        ];
      };

      # nixos/modules/services/networking/flannel.nix: iface -> FLANNELD_IFACE. Without it flannel
      # picks the default-route NIC, which in a VM is not the cluster network.
      services.flannel.iface = iface;

      services.kubernetes = {
        easyCerts = true;
        # kubernetes/default.nix: etcd endpoints, cfssl URL and the apiserver cert SANs
        # (kubernetes/apiserver.nix pki.certs.apiServer.hosts) all use masterAddress, so the
        # harness can verify the apiserver's certificate as "grey-area" (lab.toml tls_server_name).
        masterAddress = lab.master;
        # kubernetes/default.nix defaults apiserverAddress to "https://<advertiseAddress>" WITHOUT
        # the port when advertiseAddress is set (and the module's securePort default is 6443):
        # state it, with the port, on every machine.
        apiserverAddress = "https://${lab.master}:${toString lab.apiserverPort}";
        # Pod network (controller-manager --cluster-cidr, kube-proxy, flannel's network default in
        # kubernetes/flannel.nix).
        clusterCidr = lab.podCidr;
        apiserver = {
          securePort = lab.apiserverPort;
          advertiseAddress = masterIp;
          # Also read on the nodes: addons/dns.nix derives the DNS clusterIp (x.y.z.254) and with
          # it the kubelets' clusterDns from this range.
          serviceClusterIpRange = lab.serviceCidr;
        };
        kubelet = {
          # Every VM's user-mode NIC is 10.0.2.15: without this the Node would advertise that.
          nodeIp = me.address;
          seedDockerImages = [ workloadImage ];
          extraOpts = lib.optionalString (config.labtest.nodeLabels != { }) "--node-labels=${labelArg}";
        };
        addons.dns = {
          replicas = 1;
          # The addon's default Corefile ends in `forward . /etc/resolv.conf` (with `loop`, which
          # only guards against forwarding loops). These machines have no upstream resolver and
          # the guests must never reach out (vm.nix: no nameserver, restricted user NIC), and
          # CoreDNS refuses to start a forward block with no nameserver. So: serve the cluster
          # zone only - no forward, hence no loop - on the ports the addon's Deployment uses
          # (dnsPorts above): dns, health for the liveness probe, ready for a readiness probe
          # when the addon has one, prometheus for the metrics port.
          corefile = ''
            .:${toString dnsPorts.dns} {
              errors
              health :${toString dnsPorts.health}
              ${lib.optionalString (dnsPorts.ready != null) "ready :${toString dnsPorts.ready}"}
              kubernetes ${k8s.addons.dns.clusterDomain} in-addr.arpa ip6.arpa {
                pods insecure
                fallthrough in-addr.arpa ip6.arpa
              }
              prometheus :${toString dnsPorts.metrics}
              cache 30
              reload
              loadbalance
            }
          '';
        };
      };

      # The easyCerts start-up race: certificates arrive from certmgr (through cfssl on the master)
      # some time after boot, and every daemon that needs one fails until then. What keeps a unit
      # from giving up is an unlimited start rate: after 5 failed starts in 10 s systemd's
      # defaults leave a unit "failed (start-limit-hit)" for good. kube-apiserver, kubelet and
      # kube-proxy already carry Restart=on-failure + StartLimitIntervalSec=0
      # (kubernetes/apiserver.nix, kubelet.nix, proxy.nix); etcd restarts after 30 s
      # (services/databases/etcd.nix) and is restarted by certmgr when its cert lands
      # (apiserver.nix pki.certs.etcd.action); certmgr and flannel restart after 10 s
      # (services/security/certmgr.nix, services/networking/flannel.nix). Set the unlimited rate
      # on every unit on that path, so none can end in start-limit-hit whatever a module's
      # RestartSec becomes. StartLimit* belong in [Unit] (unitConfig): systemd ignores them in
      # [Service] (nixpkgs #45786). Identical values merge with the modules' own definitions.
      systemd.services =
        let
          # Only for units that exist here: a bare definition would create a unit with no ExecStart.
          unlimited =
            enabled: lib.mkIf enabled { unitConfig.StartLimitIntervalSec = 0; };
        in
        {
          certmgr = unlimited config.services.certmgr.enable;
          flannel = unlimited config.services.flannel.enable;
          etcd = unlimited config.services.etcd.enable;
          kube-apiserver = unlimited k8s.apiserver.enable;
          kube-controller-manager = unlimited k8s.controllerManager.enable;
          kube-scheduler = unlimited k8s.scheduler.enable;
          kube-addon-manager = unlimited k8s.addonManager.enable;
          kube-proxy = unlimited k8s.proxy.enable;
          kubelet = unlimited k8s.kubelet.enable;

          labtest-node-labels = lib.mkIf k8s.kubelet.enable {
            description = "Reconcile this node's labtest.io/ labels with labtest.nodeLabels";
            wantedBy = [ "kubernetes.target" ];
            after = [
              "kubelet.service"
              "certmgr.service"
            ];
            serviceConfig = {
              Type = "simple";
              RemainAfterExit = true;
              ExecStart = reconcileLabels;
            };
          };
        };

      # As nixpkgs' own Kubernetes tests do (nixos/tests/kubernetes/base.nix): kubelet port open,
      # the CNI bridge trusted, every lab peer trusted. flannel's VXLAN (UDP 8472) comes from
      # the peers, so trusting them covers it whatever the flannel module opens itself.
      # extraCommands is spliced into the nixos-fw chain before its final refuse rule
      # (nixos/modules/services/networking/firewall-iptables.nix), and the chain is rebuilt on
      # every (re)start, so these rules never pile up.
      networking.firewall = {
        allowedTCPPorts = [ 10250 ];
        trustedInterfaces = [ "mynet" ];
        extraCommands = lib.concatMapStrings (m: ''
          iptables -A nixos-fw -s ${m.address} -j nixos-fw-accept
        '') (lib.attrValues lab.machines) + ''
          iptables -A nixos-fw -s ${lab.podCidr} -j nixos-fw-accept
        '';
      };

      services.openssh.enable = true;

      environment.systemPackages = [ k8s.package ];

      # The VM overlay (and the labtest guest channel inside it) only ever reach the VM.
      virtualisation.vmVariant.imports = [ ./vm.nix ];
    }

    (lib.mkIf isMaster {
      # The apiserver (the harness forwards a host port to it over QEMU's user NIC, so it must be
      # open on every interface) and cfssl, which has no open-firewall option of its own
      # (kubernetes/pki.nix: services.cfssl.address = "0.0.0.0", port 8888 by default).
      # etcd stays on 127.0.0.1 with easyCerts (pki.nix services.etcd.listenClientUrls): no 2379.
      networking.firewall.allowedTCPPorts = [
        lab.apiserverPort
        config.services.cfssl.port
      ];
    })
  ];
}
