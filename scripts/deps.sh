#!/usr/bin/env bash
# Installs the Debian packages eapig needs to build, test and run, when any is missing (as root).
set -euo pipefail
PACKAGES="build-essential cmake pkg-config luajit libluajit-5.1-dev libopenblas-dev libpcre2-dev
  lua-cjson lua-busted luarocks lua-argparse lua-readline lua-filesystem lua-check graphviz util-linux
  libopenmpi-dev openmpi-bin clang libclang-rt-14-dev"
missing=()
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then
    echo "eapig: missing Debian packages (${missing[*]}); run this script as root" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
