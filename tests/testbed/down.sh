#!/usr/bin/env bash
# down.sh -- stop what tests/testbed/up.sh started, and nothing else: every daemon is found by
# the pidfile up.sh keeps in $NERO_TESTBED_DIR/run (its comm is checked too). Jobs still in
# Slurm/SGE are cancelled first so no job process outlives its daemon. Rewrites env.sh (which
# then exports nothing but NERO_TESTBED_DIR).
#
#   bash tests/testbed/down.sh            stop; keep state (keys, accounting DB, job state, user)
#   bash tests/testbed/down.sh --purge    also delete $NERO_TESTBED_DIR and the login user
#                                         (only if up.sh created it)
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
PURGE=0
for a in "$@"; do
  case "$a" in
    --purge) PURGE=1 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "down.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || die "down.sh must run as root"
[ -d "$TB_DIR" ] || { echo "[testbed] nothing to stop: $TB_DIR does not exist"; exit 0; }
T_ALL=$(now_ns)
tb_lock "$@"

stopped() { say "$1" down "$(since "$2")" "$3"; }

# ---- smtp
t=$(now_ns)
if smtp_up; then
  pid=$(cat "$RUN/aiosmtpd.pid"); kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 50; i++)); do is_running "$pid" || break; sleep 0.1; done
  is_running "$pid" && kill -KILL "$pid" 2>/dev/null
  stopped smtp "$t" "aiosmtpd pid $pid"
fi
rm -f "$RUN/aiosmtpd.pid"

# ---- sshd (the listener; sessions still open keep their own process until they end)
t=$(now_ns)
if pid=$(pid_alive "$RUN/sshd.pid" sshd); then stop_pid "$RUN/sshd.pid" sshd 50; stopped sshd "$t" "sshd pid $pid"; fi

# ---- sge
export SGE_ROOT=$SGE_ROOT_DIR SGE_CELL=$SGE_CELL_NAME
t=$(now_ns)
qm=$(pid_alive "$RUN/sge_qmaster.pid" sge_qmaster || true)
ex=$(pid_alive "$RUN/sge_execd.pid" sge_execd || true)
if [ -n "$qm$ex" ]; then
  if [ -n "$qm" ] && [ -n "$(qstat -u '*' 2>/dev/null)" ]; then
    qdel -u '*' >/dev/null 2>&1 || true
    for ((i = 0; i < 100; i++)); do [ -z "$(qstat -u '*' 2>/dev/null)" ] && break; sleep 0.1; done
  fi
  [ -n "$ex" ] && stop_pid "$RUN/sge_execd.pid" sge_execd 100
  [ -n "$qm" ] && stop_pid "$RUN/sge_qmaster.pid" sge_qmaster 200
  stopped sge "$t" "${qm:+sge_qmaster pid $qm }${ex:+sge_execd pid $ex}"
fi
rm -f "$RUN/sge_qmaster.pid" "$RUN/sge_execd.pid" "$RUN/sge.configured"

# ---- slurm (cancel jobs first, then slurmd, slurmctld, slurmdbd, mariadbd, munged)
t=$(now_ns)
names=""
if pid_alive "$RUN/slurmctld.pid" slurmctld >/dev/null; then
  ids=$(squeue -h -t PD,R,CG,S,CF -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${ids// /}" ]; then
    scancel $ids 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do [ -z "$(squeue -h -t R,CG -o %i 2>/dev/null)" ] && break; sleep 0.1; done
  fi
fi
for pair in slurmd:slurmd slurmctld:slurmctld slurmdbd:slurmdbd mysqld:mariadbd munged:munged; do
  f=${pair%%:*}; c=${pair##*:}
  if pid=$(pid_alive "$RUN/$f.pid" "$c"); then stop_pid "$RUN/$f.pid" "$c" 100; names+="$c "; fi
  rm -f "$RUN/$f.pid"
done
[ -n "$names" ] && stopped slurm "$t" "stopped ${names% }"

write_env
if [ "$PURGE" = 1 ]; then
  for u in "$SSH_USER" "$SSH_USER2"; do
    if getent passwd "$u" >/dev/null && [ "$(getent passwd "$u" | cut -d: -f5)" = "$USER_GECOS" ]; then
      userdel "$u" 2>/dev/null && log "deleted user $u"
    fi
  done
  # empty per-job cgroup dirs slurmd leaves behind (rmdir only removes empty ones)
  for d in /sys/fs/cgroup/*/"slurm_$HOST_S" /sys/fs/cgroup/"slurm_$HOST_S"; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  rm -rf "$TB_DIR"
  say purge ok "" "removed $TB_DIR (the Slurm/SGE configs in /etc/slurm and the SGE cell stay)"
fi
say total down "$(since "$T_ALL")" "everything up.sh started is stopped"
exit 0
