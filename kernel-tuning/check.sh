#!/usr/bin/env bash
# Compares the running kernel with the corecast recommendations.
#
#   kernel-tuning/check.sh [FILE]     FILE defaults to 90-corecast.conf beside
#                                     this script
#
# Prints one line per knob: live value, recommended value, verdict. Exits 0
# when every knob meets its recommendation, 1 on any shortfall, 2 on usage
# errors. Needs no privileges (reads /proc/sys only).
#
# "Meets" depends on the knob:
#   at least  each field >= recommended (capacities: file-max, backlogs, tcp_mem)
#   at most   value <= recommended (tcp_fin_timeout)
#   range     low <= recommended low and high >= recommended high (port range)
#   exactly   every field equal (tcp_tw_reuse, tcp_rmem, tcp_wmem)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
file=${1:-$here/90-corecast.conf}
[ -r "$file" ] || { echo "check.sh: cannot read $file" >&2; exit 2; }

rule_for() {
    case $1 in
        net.ipv4.tcp_fin_timeout) echo "at most" ;;
        net.ipv4.ip_local_port_range) echo "range" ;;
        net.ipv4.tcp_tw_reuse | net.ipv4.tcp_rmem | net.ipv4.tcp_wmem) echo "exactly" ;;
        *) echo "at least" ;;
    esac
}

# meets RULE "LIVE FIELDS" "RECOMMENDED FIELDS": exit status 0 when met.
meets() {
    local rule=$1 i
    local -a have want
    read -r -a have <<<"$2"
    read -r -a want <<<"$3"
    [ "${#have[@]}" -eq "${#want[@]}" ] || return 1
    case $rule in
        "at least")
            for i in "${!want[@]}"; do [ "${have[i]}" -ge "${want[i]}" ] || return 1; done ;;
        "at most")
            for i in "${!want[@]}"; do [ "${have[i]}" -le "${want[i]}" ] || return 1; done ;;
        "range")
            [ "${have[0]}" -le "${want[0]}" ] && [ "${have[1]}" -ge "${want[1]}" ] ;;
        "exactly")
            for i in "${!want[@]}"; do [ "${have[i]}" -eq "${want[i]}" ] || return 1; done ;;
    esac
}

short=0
printf '%-32s %-28s %-28s %-9s %s\n' KNOB LIVE RECOMMENDED RULE VERDICT
while IFS= read -r line || [ -n "$line" ]; do
    line=${line%%#*}
    [[ $line =~ ^[[:space:]]*([a-z0-9_.-]+)[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*$ ]] || continue
    key=${BASH_REMATCH[1]}
    recommended=$(echo "${BASH_REMATCH[2]}" | tr -s ' \t' ' ')
    rule=$(rule_for "$key")
    proc=/proc/sys/${key//.//}
    if [ -r "$proc" ]; then
        live=$(tr -s ' \t' ' ' <"$proc")
        if meets "$rule" "$live" "$recommended"; then
            verdict=ok
        else
            verdict=SHORT
            short=1
        fi
    else
        live="(absent)"
        verdict=SHORT
        short=1
    fi
    printf '%-32s %-28s %-28s %-9s %s\n' "$key" "$live" "$recommended" "$rule" "$verdict"
done <"$file"

# The file-descriptor limit of a running node, when there is one.
nofile_rec=$(awk '$1 == "corecast" && $3 == "nofile" { print $4; exit }' \
    "$here/90-corecast-limits.conf" 2>/dev/null || true)
if [ -n "$nofile_rec" ] && command -v pgrep >/dev/null; then
    for pid in $(pgrep -x corecast || true); do
        live=$(awk '/^Max open files/ { print $4 }' "/proc/$pid/limits" 2>/dev/null || echo "?")
        if [ "$live" = unlimited ] || { [ "$live" != "?" ] && [ "$live" -ge "$nofile_rec" ]; }; then
            verdict=ok
        else
            verdict=SHORT
            short=1
        fi
        printf '%-32s %-28s %-28s %-9s %s\n' "nofile(corecast pid $pid)" "$live" "$nofile_rec" "at least" "$verdict"
    done
fi

if [ "$short" -ne 0 ]; then
    echo "shortfall: run kernel-tuning/apply.sh as root (see kernel-tuning/README.md)" >&2
fi
exit "$short"
