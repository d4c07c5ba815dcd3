#!/usr/bin/env bash
# Stop the cluster scripts/slurm/start_cluster.sh started, by the PIDs it saved: jobs are cancelled first,
# then the slurmd nodes, any job step daemon still holding our spool directory, slurmctld and munged.
# `--wipe` also removes $BASTION_SLURM_DIR.
set -uo pipefail
DIR=${BASTION_SLURM_DIR:-${TMPDIR:-/tmp}/bastion-slurm-ci}
HOSTS_TAG="# bastion-slurm-ci"
say() { echo "[stop_cluster] $*" >&2; }
[ -d "$DIR" ] || { say "nothing under $DIR"; exit 0; }
export SLURM_CONF=$DIR/slurm.conf

saved_pid() { # pidfile expected-command -> pid, if that process is still that program
  [ -s "$1" ] || return 1
  local pid; pid=$(cat "$1")
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
}
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
terminate() { # pids...: TERM, up to 10 s grace, then KILL
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null
  for _ in $(seq 100); do
    local left=0; for p in "$@"; do alive "$p" && left=1; done
    [ $left = 0 ] && return 0
    sleep 0.1
  done
  say "still alive after 10 s, killing: $*"; kill -KILL "$@" 2>/dev/null; sleep 0.2
}

ctld=$(saved_pid "$DIR/pids/slurmctld.pid" slurmctld || true)
if [ -n "$ctld" ]; then
  timeout 10 scancel --quiet --full --user="$(id -un)" 2>/dev/null
  for _ in $(seq 60); do
    [ -z "$(timeout 5 squeue -h -t running,completing -o %i 2>/dev/null)" ] && break
    sleep 0.25
  done
fi
nodes=()
for f in "$DIR"/pids/slurmd-n*.pid; do
  [ -e "$f" ] || continue
  case $f in *.own.pid) continue ;; esac
  p=$(saved_pid "$f" slurmd) && nodes+=("$p")
done
terminate "${nodes[@]}"
# a job step daemon whose node was stopped under it: found by its files in our spool directory
steps=()
for d in /proc/[0-9]*; do
  [ "$(cat "$d/comm" 2>/dev/null)" = slurmstepd ] || continue
  ls -l "$d/cwd" "$d/fd" 2>/dev/null | grep -qF -- "$DIR/" && steps+=("${d#/proc/}")
done
terminate "${steps[@]}"
[ -n "$ctld" ] && terminate "$ctld"
m=$(saved_pid "$DIR/pids/munged.pid" munged) && terminate "$m"
rm -f "$DIR"/pids/*.pid
if grep -q -- "$HOSTS_TAG\$" /etc/hosts 2>/dev/null; then
  hosts=$(grep -v -- "$HOSTS_TAG\$" /etc/hosts)
  printf '%s\n' "$hosts" >/etc/hosts
fi
[ "${1:-}" = --wipe ] && rm -rf "$DIR"
say "stopped ${#nodes[@]} slurmd, ${#steps[@]} stray slurmstepd${ctld:+, slurmctld}${m:+, munged}"
exit 0
