#!/usr/bin/env bash
# Make sure the system tools the test suite runs are present; install the missing ones.
#
# Machines of this kind ship them (redis-server, redis-cli, java 17, npm, openssl), so this
# is normally a no-op. On a bare Debian machine, as root, it installs what is missing.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v npm >/dev/null 2>&1 || missing+=(npm)

if ((${#missing[@]} == 0)); then
    exit 0
fi
echo "installing missing tools: ${missing[*]}" >&2
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "cannot install ${missing[*]}: run as root on Debian, or install them yourself" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
