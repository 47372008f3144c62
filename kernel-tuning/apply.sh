#!/usr/bin/env bash
# Installs the corecast kernel settings and applies them to the running kernel.
#
#   sudo kernel-tuning/apply.sh            install + apply + check
#   kernel-tuning/apply.sh --no-reload     install the files only
#
# Idempotent: a file is rewritten only when its content differs, and applying
# the same sysctl values twice changes nothing. Prints what it did.
#
# Environment (for tests and images built in a chroot):
#   SYSCTL_DIR   where 90-corecast.conf goes   (default /etc/sysctl.d)
#   LIMITS_DIR   where the limits file goes    (default /etc/security/limits.d)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
sysctl_dir=${SYSCTL_DIR:-/etc/sysctl.d}
limits_dir=${LIMITS_DIR:-/etc/security/limits.d}
reload=1

usage() {
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case $1 in
        --no-reload) reload=0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "apply.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

# install_file SRC DST: copies SRC to DST (mode 0644) unless identical.
install_file() {
    local src=$1 dst=$2
    if cmp -s "$src" "$dst"; then
        echo "unchanged: $dst"
    else
        install -D -m 0644 "$src" "$dst"
        echo "installed: $dst"
    fi
}

install_file "$here/90-corecast.conf" "$sysctl_dir/90-corecast.conf"
install_file "$here/90-corecast-limits.conf" "$limits_dir/90-corecast.conf"

if [ "$reload" -eq 0 ]; then
    echo "not applied to the running kernel (--no-reload)"
    exit 0
fi

# Applies this file only (not sysctl --system): other files in sysctl.d are
# not ours to re-apply. Order inside the file matters: fs.nr_open comes first.
sysctl -q -p "$sysctl_dir/90-corecast.conf"
echo "applied: $sysctl_dir/90-corecast.conf"
echo "note: limits.d applies to new login sessions; systemd units set their own limits"

exec "$here/check.sh" "$sysctl_dir/90-corecast.conf"
