#!/usr/bin/env bash
# Installs (once) the Debian packages the real node and the image builds need, at the versions pinned in
# hack/versions.env: containerd, runc, the CNI plugins, iptables/nftables/conntrack for kube-proxy and the
# network guard, buildah and mmdebstrap for images, gcc for the pause binary. Needs root (CI runs as root).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
log() { printf '[node-packages %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
# shellcheck disable=SC2206
wanted=($DEB_PACKAGES)
missing=()
for spec in "${wanted[@]}"; do
  name=${spec%%=*} version=${spec#*=}
  have=$(dpkg-query -W -f='${Status} ${Version}' "$name" 2>/dev/null || true)
  if [[ "$have" != "install ok installed"* ]] || { [[ "$spec" == *=* ]] && [[ "$have" != *" $version" ]]; }; then
    missing+=("$spec")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then log "all ${#wanted[@]} packages present"; exit 0; fi
if [ "$(id -u)" != 0 ]; then echo "installing ${missing[*]} needs root" >&2; exit 1; fi
log "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
log "installed"
