# scripts/lib.sh - shared by scripts/run, scripts/test and scripts/s3-server.
# Source it; it defines functions and package lists only.
# shellcheck shell=bash disable=SC2034

# Debian packages, by what needs them (strings: scripts/bench uses them too).
PKGS_BUILD="cmake make gcc pkg-config libfuse3-dev libcurl4-openssl-dev libssl-dev zlib1g-dev liblmdb-dev"
PKGS_RUN="fuse3 attr curl python3 ca-certificates"
PKGS_TEST="libcmocka-dev python3-pytest tar btrfs-progs util-linux mount e2fsprogs"
PKGS_S3="ceph-mon ceph-osd radosgw ceph-common"

# The system python (the one python3-pytest installs into), not a pyenv shim.
if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; else PY=python3; fi

msg() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { msg "error: $*"; exit 1; }

as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

_APT_UPDATED=0
# ensure_pkgs PKG... : apt-get install whatever is not installed yet
# (one apt-get update first, once per script run).
ensure_pkgs() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed ||
			missing+=("$p")
	done
	[ ${#missing[@]} = 0 ] && return 0
	command -v apt-get >/dev/null || die "missing packages and no apt-get: ${missing[*]}"
	msg "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	if [ $_APT_UPDATED = 0 ]; then
		as_root apt-get update -q </dev/null >&2 || die "apt-get update failed"
		_APT_UPDATED=1
	fi
	as_root apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null >&2 ||
		die "apt-get install ${missing[*]} failed"
}

# A per-user directory for state that outlives a reboot of the shell (not /tmp).
state_dir() {  # NAME
	if [ "$(id -u)" = 0 ]; then
		echo "/var/tmp/$1"
	else
		echo "${XDG_STATE_HOME:-$HOME/.local/state}/$1"
	fi
}

# Is PATH a mount point right now? (reads /proc/mounts, which escapes blanks)
is_mounted() {  # PATH
	local want
	want=$(realpath -m -- "$1" | sed 's/ /\\040/g; s/\t/\\011/g')
	awk -v m="$want" '$2 == m { f = 1 } END { exit !f }' /proc/mounts
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
