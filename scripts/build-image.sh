#!/usr/bin/env bash
# `make image`: podnet's OCI image, built here from Debian's archive (no registry is needed):
# a bookworm root file system by mmdebstrap with python3, libnftables and BIRD, podnet and its
# Python dependencies installed from wheels, imported into podman as localhost/podnet:VERSION.
# The image carries a digest of the source it was built from; an image of the same source is
# kept (a cache that is safe: same source, same image).
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
version=$($py -c 'from importlib.metadata import version; print(version("podnet"))')
source=$(git ls-files -s src pyproject.toml scripts/build-image.sh | sha256sum | cut -c1-16)
image="localhost/podnet:$version"
have=$(podman image inspect --format '{{index .Labels "podnet.source"}}' "$image" 2>/dev/null || true)
if [ "$have" = "$source" ] && [ -z "$(git status --porcelain src pyproject.toml)" ]; then
  echo "$image (source $source) is up to date"
  exit 0
fi
start=$(date +%s)
work=$(mktemp -d /tmp/podnet-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
$py -m pip wheel --quiet --wheel-dir "$work/wheels" .
site=/usr/local/lib/python3.11/dist-packages  # bookworm's python3 looks here
mmdebstrap --quiet --variant=essential \
  --include=python3,libnftables1,nftables,bird2,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook="$py -m pip install --quiet --no-index --find-links $work/wheels \
      --target \"\$1$site\" podnet && rm -rf \"\$1$site/bin\"" \
  --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
  bookworm "$work/rootfs.tar"
podman import --quiet --change 'ENTRYPOINT ["python3", "-m", "podnet"]' \
  --change "LABEL podnet.source=$source" "$work/rootfs.tar" "$image" >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$image")
echo "$image (source $source): $((size / 1000000)) MB, built in $(( $(date +%s) - start )) s"
