#!/usr/bin/env bash
# Installs the Debian packages dreamstep needs (headless EGL via Mesa, Xvfb for the
# window test) when running as root and they are missing. Safe to run repeatedly.
set -uo pipefail
pkgs=(libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri xvfb)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != "0" ]; then
  echo "dreamstep: missing system packages: ${missing[*]}" >&2
  echo "  install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 0
fi
echo "dreamstep: installing system packages: ${missing[*]}"
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
