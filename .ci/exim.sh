#!/usr/bin/env bash
# Fetch Debian's Exim (exim4-daemon-heavy: the build with content scanning, i.e. the `spam` ACL
# condition) for tests/test_exim.py WITHOUT installing it: Debian's exim4 packages conflict with
# postfix, which the Postfix tests need.  The .deb is unpacked into a cache directory; only the
# shared libraries the binary links against are installed with apt (they conflict with nothing),
# and the system user Exim's binary is compiled to run deliveries as (Debian-exim) is created.
#
# Idempotent: does nothing when the binary is already there and runs.  Needs root (apt, useradd).
# The directory is $ANTISPAM_EXIM_DIR, else /var/cache/antispam-exim (tests/exim.py looks in the
# same place); Exim re-executes itself as Debian-exim, so every directory above the binary must be
# searchable by that user (not under /root).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

dir="${ANTISPAM_EXIM_DIR:-/var/cache/antispam-exim}"
exe="$dir/root/usr/sbin/exim4"

if ! getent group Debian-exim >/dev/null; then groupadd --system Debian-exim; fi
if ! getent passwd Debian-exim >/dev/null; then
    useradd --system --gid Debian-exim --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin Debian-exim
fi

if [ -x "$exe" ] && "$exe" -C /dev/null -bV >/dev/null 2>&1; then
    exit 0
fi

mkdir -p "$dir"
cd "$dir"
rm -rf root ./*.deb
# apt-get download writes into the current directory; _apt cannot always read it, hence the chmod.
chmod 755 "$dir"
apt-get download exim4-daemon-heavy || { apt-get update -qq && apt-get download exim4-daemon-heavy; }
deb=$(ls exim4-daemon-heavy_*.deb)
dpkg -x "$deb" root

# The library packages among the binary's dependencies (libc6, libgnutls30, libspf2-2, ...).
libs=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/(.*)//; s/|.*//' | tr -d ' ' | grep '^lib' || true)
missing=""
for p in $libs; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"; done
if [ -n "$missing" ]; then
    apt-get install -y -qq --no-install-recommends $missing
fi

if ldd "$exe" | grep -q "not found"; then
    echo "exim.sh: libraries still missing:" >&2
    ldd "$exe" | grep "not found" >&2
    exit 1
fi
"$exe" -C /dev/null -bV | head -1
