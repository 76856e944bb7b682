#!/usr/bin/env bash
# Installs the real third-party software sft's tests run (loopback only), via apt.
# Idempotent and quiet when everything is present. Not root / no apt: say what is
# missing; the tests then skip (or fail under CI=true) with the same names.
set -euo pipefail

# command-to-check  debian-package
wanted=(
  "/usr/lib/postgresql/*/bin/initdb postgresql"
  "runuser util-linux"
  "/usr/sbin/sshd openssh-server"
  "ssh openssh-client"
  "/usr/sbin/useradd passwd"
  "/usr/sbin/visudo sudo"
  "/usr/sbin/xrdp xrdp"
  "xfreerdp freerdp2-x11"
  "Xvfb xvfb"
  "Xvnc tigervnc-standalone-server"
)

missing=()
for entry in "${wanted[@]}"; do
  probe=${entry% *}; package=${entry##* }
  if [[ $probe == /* ]]; then
    compgen -G "$probe" >/dev/null || missing+=("$package")
  else
    command -v "$probe" >/dev/null || missing+=("$package")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "tools/install-system-deps.sh: missing packages: ${missing[*]} (install them as root)" >&2
  exit 0
fi
echo "Installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive

# Packages like openssh-server start their daemon on install (sshd on port 22) via
# invoke-rc.d; a policy-rc.d that exits 101 forbids that. Remove it only if we made it.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
  trap 'rm -f "$policy"' EXIT
  printf '#!/bin/sh\n# Written by sft tools/install-system-deps.sh during apt-get install.\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
fi

apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
