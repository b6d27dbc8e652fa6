#!/usr/bin/env bash
# Installs the Debian packages podnet's demo and tests use, only those missing.
set -euo pipefail
want=(iproute2 iputils-ping nftables iptables iperf3 etcd-server etcd-client
      containernetworking-plugins util-linux procps psmisc python3-venv
      podman runc busybox-static bird2 libnftables1 openssl ethtool containerd systemd
      mmdebstrap curl jq)
missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
