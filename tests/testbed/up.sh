#!/usr/bin/env bash
# up.sh -- bring up the REAL components nero's tests talk to, on one Debian 12 machine (as root,
# no systemd): sshd on 127.0.0.1, single-node Slurm 22.05 with slurmdbd accounting, single-node
# SGE 8.1.9, an aiosmtpd SMTP server, LibreOffice headless, headless Chromium.
#
#   bash tests/testbed/up.sh [sshd] [slurm] [sge] [smtp] [libreoffice] [chromium]   (none = all)
#   . "${NERO_TESTBED_DIR:-/tmp/nero-testbed}/env.sh"                              (then pytest)
#
# Idempotent: a second run checks everything in ~2 s and changes nothing. All state (configs,
# keys, pidfiles, logs, job state, the accounting DB) lives in $NERO_TESTBED_DIR
# (default /tmp/nero-testbed); the only files written outside it are /etc/slurm/*.conf
# (where Slurm's CLI looks, also in non-interactive ssh sessions), the SGE cell under
# /var/lib/gridengine + /var/spool/gridengine (where the Debian packages put it), the munge key
# and the two login users. tests/testbed/down.sh stops exactly what this script started.
#
# Env: NERO_TESTBED_DIR (/tmp/nero-testbed)   NERO_TESTBED_SSH_PORT (2222)
#      NERO_TESTBED_SSH_USER (nerotest)       NERO_TESTBED_SSH_USER2 (nerotest2, a second login)
#      NERO_TESTBED_SMTP_PORT (8025)
#      NERO_TESTBED_DB_PORT (3307)            NERO_TESTBED_SLURM_CPUS (8, advertised)
#      NERO_TESTBED_SGE_SLOTS (nproc)
#      NERO_TESTBED_RECHECK=1: rerun the smoke jobs/conversions even when everything is up.
# See tests/testbed/README.md.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
RECHECK=${NERO_TESTBED_RECHECK:-0}

ORDER=(slurm sge sshd smtp libreoffice chromium)   # start order: sshd's check runs sinfo/qstat
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
want=()
for a in "$@"; do
  case "$a" in
    -h|--help) usage 0 ;;
    all) want=("${ORDER[@]}") ;;
    sshd|ssh) want+=(sshd) ;;
    slurm|sge|smtp|chromium) want+=("$a") ;;
    libreoffice|soffice|lo) want+=(libreoffice) ;;
    *) printf 'up.sh: unknown service %q (known: %s)\n' "$a" "${ORDER[*]}" >&2; exit 2 ;;
  esac
done
((${#want[@]})) || want=("${ORDER[@]}")
wants() { local s; for s in "${want[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

[ "$(id -u)" = 0 ] || die "up.sh must run as root (it installs packages and starts daemons)"
T_ALL=$(now_ns)
tb_lock "$@"
umask 022
mkdir -p "$RUN" "$LOGD"
chmod 0755 "$TB_DIR"

# ============================================================================ packages
declare -A PKGS=(
  [sshd]="openssh-server openssh-client"
  [slurm]="slurm-wlm munge slurmdbd mariadb-server-core mariadb-client-core"
  [sge]="gridengine-master gridengine-exec gridengine-client"
  [smtp]="python3-aiosmtpd"
  [libreoffice]="libreoffice-calc-nogui poppler-utils fonts-dejavu-core"
  [chromium]="chromium fonts-dejavu-core"
)
apt_lists_fresh() {  # some package list, and `apt-get update` ran in the last 24 h
  compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null || return 1
  [ -n "$(find /var/lib/apt/lists /var/lib/apt/lists/partial -maxdepth 0 -mmin -1440 2>/dev/null)" ]
}
install_packages() {
  local s p pk need=() t
  for s in "${want[@]}"; do for p in ${PKGS[$s]}; do pk+=" $p"; done; done
  # one dpkg-query for all: "name ii" per installed package
  local installed
  installed=$({ dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' $pk 2>/dev/null || true; } | awk '$2 ~ /^ii/ {print $1}')
  for p in $pk; do
    grep -qx "$p" <<<"$installed" || [[ " ${need[*]} " == *" $p "* ]] || need+=("$p")
  done
  ((${#need[@]})) || return 0
  t=$(now_ns)
  if [[ " ${need[*]} " == *" gridengine-"* ]]; then
    # the master postinst creates the cell from these answers (master host, cell name)
    debconf-set-selections <<SEL
gridengine-common shared/gridenginemaster string ${HOST_F}
gridengine-common shared/gridenginecell string ${SGE_CELL_NAME}
gridengine-common shared/gridengineconfig boolean true
gridengine-client shared/gridenginemaster string ${HOST_F}
gridengine-client shared/gridenginecell string ${SGE_CELL_NAME}
gridengine-client shared/gridengineconfig boolean true
SEL
  fi
  local updated=0
  if ! apt_lists_fresh; then
    log "apt-get update (package lists missing or older than a day)"
    apt-get update -q </dev/null >>"$LOGD/apt.log" 2>&1 || die "apt-get update failed" "$LOGD/apt.log"
    updated=1
  fi
  log "apt-get install ${need[*]}"
  local cmd=(apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300
             -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${need[@]}")
  if ! "${cmd[@]}" </dev/null >>"$LOGD/apt.log" 2>&1; then
    [ "$updated" = 1 ] && die "apt-get install failed" "$LOGD/apt.log"
    log "apt-get install failed: apt-get update and one retry"
    apt-get update -q </dev/null >>"$LOGD/apt.log" 2>&1 || die "apt-get update failed" "$LOGD/apt.log"
    "${cmd[@]}" </dev/null >>"$LOGD/apt.log" 2>&1 || die "apt-get install failed" "$LOGD/apt.log"
  fi
  say packages ok "$(since "$t")" "installed ${#need[@]}: ${need[*]}"
}

# ============================================================================ slurm
SLURM_CONF=/etc/slurm/slurm.conf
SLURM_CGCONF=/etc/slurm/cgroup.conf
SLURM_DBDCONF=/etc/slurm/slurmdbd.conf
SLURM_LOGS=("$LOGD/slurmctld.log" "$LOGD/slurmd.log" "$LOGD/slurmdbd.log" "$LOGD/mysqld.log")
SLURM_COLD=0
# refuse to fight daemons somebody else started (e.g. a hand-run reference script)
foreign_check() {  # foreign_check COMM OUR_PIDFILE
  local ours="" p
  ours=$(pid_alive "$2" "$1" || true)
  for p in $(pids_named "$1"); do
    [ "$p" = "$ours" ] && continue
    die "a $1 not started by up.sh is running (pid $p, $(tr '\0' ' ' </proc/"$p"/cmdline 2>/dev/null)); stop it first (it uses the same ports and /etc/slurm)"
  done
}
install_if_changed() {  # install_if_changed MODE NEWFILE DEST -> return 0 if DEST changed
  if [ -f "$3" ] && cmp -s "$2" "$3"; then return 1; fi
  install -D -m "$1" "$2" "$3"; log "wrote $3"; return 0
}
up_slurm() {
  local t pid changed=0 new st i
  foreign_check slurmctld "$RUN/slurmctld.pid"
  foreign_check slurmd "$RUN/slurmd.pid"
  foreign_check slurmdbd "$RUN/slurmdbd.pid"
  mkdir -p "$TB_DIR/slurm/state" "$TB_DIR/slurm/spool"

  # munge key + munged (a munged that already answers on the default socket is reused)
  install -d -o munge -g munge -m 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then mungekey --create --keyfile=/etc/munge/munge.key; fi
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  if ! { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }; then
    runuser -u munge -- /usr/sbin/munged || die "munged failed to start" /var/log/munge/munged.log
    wait_for 100 sh -c 'munge -n | unmunge' || die "munged does not answer" /var/log/munge/munged.log
    cp /run/munge/munged.pid "$RUN/munged.pid"    # marks it as ours for down.sh
    SLURM_COLD=1
  fi

  # config (RealMemory below what slurmd detects, else the node goes INVAL)
  local detected realmem
  detected=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)
  [ -n "$detected" ] || die "slurmd -C reported no RealMemory"
  realmem=$(( detected > 2048 ? detected - 512 : detected ))
  new=$(mktemp)
  cat >"$new" <<CONF
# generated by nero tests/testbed/up.sh -- single-node test cluster; state in ${TB_DIR}
ClusterName=nero
SlurmctldHost=${HOST_S}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# cgroup v1 (hybrid mount here): --mem is enforced (job ends OUT_OF_MEMORY), --time too
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=${RUN}/slurmctld.pid
SlurmdPidFile=${RUN}/slurmd.pid
SlurmctldLogFile=${LOGD}/slurmctld.log
SlurmdLogFile=${LOGD}/slurmd.log
SlurmdSpoolDir=${TB_DIR}/slurm/spool
StateSaveLocation=${TB_DIR}/slurm/state
SchedulerType=sched/backfill
# start queued jobs ~1 s after a slot frees instead of ~3 s
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without DefMemPerCPU every job takes the whole node's memory => one job at a time
DefMemPerCPU=1024
# finished jobs stay visible to squeue -t all / scontrol for an hour
MinJobAge=3600
MaxJobCount=50000
MaxArraySize=10001
# a job over --time is killed at the next time-limit sweep (slurmctld: every 30 s), no grace
OverTimeLimit=0
KillWait=5
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
JobCompType=jobcomp/filetxt
JobCompLoc=${LOGD}/slurm-jobcomp.log
# lets the node advertise more CPUs than the machine has cores
SlurmdParameters=config_overrides
NodeName=${HOST_S} NodeAddr=127.0.0.1 CPUs=${SLURM_CPUS} Sockets=1 CoresPerSocket=${SLURM_CPUS} ThreadsPerCore=1 RealMemory=${realmem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  install_if_changed 0644 "$new" "$SLURM_CONF" && changed=1
  printf '# generated by nero tests/testbed/up.sh\nCgroupPlugin=autodetect\nConstrainCores=yes\nConstrainRAMSpace=yes\n' >"$new"
  install_if_changed 0644 "$new" "$SLURM_CGCONF" && changed=1
  cat >"$new" <<CONF
# generated by nero tests/testbed/up.sh
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=${LOGD}/slurmdbd.log
PidFile=${RUN}/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=${DB_PORT}
StorageUser=slurm
StoragePass=slurm-test-only
StorageLoc=slurm_acct_db
CONF
  install_if_changed 0600 "$new" "$SLURM_DBDCONF" && changed=1
  rm -f "$new"
  if [ "$changed" = 1 ]; then   # restart the daemons we own (job state in $TB_DIR survives)
    stop_pid "$RUN/slurmd.pid" slurmd || true
    stop_pid "$RUN/slurmctld.pid" slurmctld || true
    stop_pid "$RUN/slurmdbd.pid" slurmdbd || true
  fi

  # private MariaDB on 127.0.0.1:$DB_PORT
  local DB=(mariadb --no-defaults --socket="$RUN/mysqld.sock")
  if [ ! -d "$TB_DIR/slurm/mysql/mysql" ]; then
    mariadb-install-db --no-defaults --user=root --datadir="$TB_DIR/slurm/mysql" \
      --auth-root-authentication-method=socket --skip-test-db >"$LOGD/mysql-install.log" 2>&1 \
      || die "mariadb-install-db failed" "$LOGD/mysql-install.log"
  fi
  if ! pid_alive "$RUN/mysqld.pid" mariadbd >/dev/null; then
    port_open "$DB_PORT" && die "port $DB_PORT is taken by $(port_owner "$DB_PORT") (not started by up.sh); set NERO_TESTBED_DB_PORT"
    setsid /usr/sbin/mariadbd --no-defaults --user=root --datadir="$TB_DIR/slurm/mysql" \
      --socket="$RUN/mysqld.sock" --port="$DB_PORT" --bind-address=127.0.0.1 \
      --pid-file="$RUN/mysqld.pid" --log-error="$LOGD/mysqld.log" \
      --skip-log-bin --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
    wait_for 300 "${DB[@]}" -e 'select 1' || die "mariadbd did not come up in 30 s" "$LOGD/mysqld.log"
    SLURM_COLD=1
  fi
  "${DB[@]}" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm-test-only';
                 GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" \
    || die "could not create the slurm DB user" "$LOGD/mysqld.log"

  if ! pid_alive "$RUN/slurmdbd.pid" slurmdbd >/dev/null; then
    /usr/sbin/slurmdbd || die "slurmdbd failed to start" "$LOGD/slurmdbd.log"
    wait_for 200 port_open 6819 || die "slurmdbd not listening on 6819 after 20 s" "$LOGD/slurmdbd.log"
    SLURM_COLD=1
  fi
  if ! pid_alive "$RUN/slurmctld.pid" slurmctld >/dev/null; then
    /usr/sbin/slurmctld || die "slurmctld failed to start" "$LOGD/slurmctld.log"
    SLURM_COLD=1
  fi
  wait_for 300 sh -c 'scontrol ping | grep -q "is UP"' || die "slurmctld not answering after 30 s" "$LOGD/slurmctld.log"
  if ! pid_alive "$RUN/slurmd.pid" slurmd >/dev/null; then
    /usr/sbin/slurmd || die "slurmd failed to start" "$LOGD/slurmd.log"
    SLURM_COLD=1
  fi

  # node takes jobs?
  st=""
  for ((i = 0; i < 300; i++)); do
    st=$(sinfo -h -n "$HOST_S" -o %T 2>/dev/null | head -n1)
    case "$st" in
      idle|mixed|allocated|completing) break ;;
      down*|drain*|*inval*|fail*) scontrol update nodename="$HOST_S" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.1
  done
  case "$st" in idle|mixed|allocated|completing) ;; *) die "slurm node state '$st' after 30 s" "${SLURM_LOGS[@]}" ;; esac
  if [ "$SLURM_COLD" = 1 ] || [ "$changed" = 1 ] || [ "$RECHECK" = 1 ]; then
    wait_for 200 sh -c 'sacctmgr -n -P show cluster format=cluster | grep -qx nero' \
      || die "cluster 'nero' not registered in slurmdbd after 20 s" "${SLURM_LOGS[@]}"
  fi
  sacct -n -X -P -o JobID -j 1 >/dev/null 2>"$LOGD/sacct-check.err" || die "sacct does not answer" "$LOGD/sacct-check.err" "$LOGD/slurmdbd.log"

  local detail="node $st, ${SLURM_CPUS} CPUs, sacct ok"
  if [ "$SLURM_COLD" = 1 ] || [ "$changed" = 1 ] || [ "$RECHECK" = 1 ]; then
    # a real job, start to accounting record
    local jid out
    out=$(cd /tmp && sbatch --parsable -J testbed-smoke -o /dev/null -e /dev/null --wrap 'true' 2>&1) \
      || die "sbatch failed: $out" "${SLURM_LOGS[@]}"
    jid=${out%%;*}
    st=""
    for ((i = 0; i < 600; i++)); do
      st=$(sacct -n -X -P -o State -j "$jid" 2>/dev/null | head -n1)
      case "$st" in COMPLETED) break ;; FAILED*|CANCELLED*|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL) break ;; esac
      sleep 0.1
    done
    [ "$st" = COMPLETED ] || die "smoke job $jid is '$st' in sacct (want COMPLETED within 60 s)" "${SLURM_LOGS[@]}"
    detail="$detail, smoke job $jid COMPLETED in sacct"
  fi
  SLURM_DETAIL=$detail
}

# ============================================================================ sge
export SGE_ROOT=$SGE_ROOT_DIR SGE_CELL=$SGE_CELL_NAME
SGE_LOGS=(/var/spool/gridengine/qmaster/messages)
sge_edit() {  # sge_edit 'sed-expr' qconf -mXXX ...   (qconf opens $EDITOR on a temp file)
  local expr=$1 ed; shift
  ed=$(mktemp); printf '#!/bin/sh\nsed -i -e %q "$1"\n' "$expr" >"$ed"; chmod +x "$ed"
  EDITOR=$ed "$@" >/dev/null 2>&1 || { rm -f "$ed"; die "qconf $* failed" "${SGE_LOGS[@]}"; }
  rm -f "$ed"
}
sge_configure() {
  local slots=$1 f
  qconf -sh 2>/dev/null | grep -qx "$HOST_F" || qconf -ah "$HOST_F" >/dev/null 2>&1
  qconf -ss 2>/dev/null | grep -qx "$HOST_F" || qconf -as "$HOST_F" >/dev/null 2>&1
  if ! qconf -shgrpl 2>/dev/null | grep -qx '@allhosts'; then
    f=$(mktemp); printf 'group_name @allhosts\nhostlist %s\n' "$HOST_F" >"$f"
    qconf -Ahgrp "$f" >/dev/null 2>&1 || die "qconf -Ahgrp failed" "${SGE_LOGS[@]}"; rm -f "$f"
  fi
  if ! qconf -sql 2>/dev/null | grep -qx 'all.q'; then
    sge_edit "s/^qname .*/qname all.q/;s/^hostlist .*/hostlist @allhosts/;s/^pe_list .*/pe_list NONE/;s/^slots .*/slots ${slots}/;s|^shell .*|shell /bin/bash|" qconf -aq all.q
  fi
  qconf -sq all.q | grep -qE "^slots +${slots}\$" || qconf -mattr queue slots "$slots" all.q >/dev/null 2>&1
  # a busy machine (CI under load) must not put the queue into load alarm ('a'), where SGE
  # schedules nothing: no load thresholds
  qconf -sq all.q | grep -qE '^load_thresholds +NONE$' || qconf -rattr queue load_thresholds NONE all.q >/dev/null 2>&1
  # schedule every second instead of every 15 s
  qconf -ssconf | grep -qE '^schedule_interval +0:0:1$' || \
    sge_edit 's/^schedule_interval .*/schedule_interval 0:0:1/;s/^flush_submit_sec .*/flush_submit_sec 1/;s/^flush_finish_sec .*/flush_finish_sec 1/' qconf -msconf
  # qacct records at once instead of up to 15 s after a job ends
  qconf -sconf | grep -q 'accounting_flush_time=00:00:00' || \
    sge_edit 's/flush_time=00:00:15/flush_time=00:00:01 accounting_flush_time=00:00:00/' qconf -mconf global
  # root may submit too (default min_uid/min_gid 1000 rejects root's jobs)
  qconf -sconf | grep -qE '^min_uid +0$' || sge_edit 's/^min_uid .*/min_uid 0/;s/^min_gid .*/min_gid 0/' qconf -mconf global
}
up_sge() {
  local cold=0 pid epid f i
  [ -s "$SGE_ROOT/$SGE_CELL/common/bootstrap" ] || die "SGE cell not initialised by the gridengine-master postinst ($SGE_ROOT/$SGE_CELL/common/bootstrap missing); was it installed without the debconf preseed?"
  # installed without the preseed (act_qmaster empty) or on a machine renamed since
  if [ "$(cat "$SGE_ROOT/$SGE_CELL/common/act_qmaster" 2>/dev/null)" != "$HOST_F" ]; then
    echo "$HOST_F" >"$SGE_ROOT/$SGE_CELL/common/act_qmaster"
    chown sgeadmin:sgeadmin "$SGE_ROOT/$SGE_CELL/common/act_qmaster"
  fi
  # 127.0.0.1 reverse-resolves to 'localhost' here while clients call themselves $HOST_F:
  # without this alias qmaster refuses them ("client IP resolved to host name localhost")
  if [ "$(cat "$SGE_ROOT/$SGE_CELL/common/host_aliases" 2>/dev/null)" != "$HOST_F localhost" ]; then
    echo "$HOST_F localhost" >"$SGE_ROOT/$SGE_CELL/common/host_aliases"
  fi
  install -d -o sgeadmin -g sgeadmin /var/run/gridengine

  if pid=$(pid_alive "$SGE_QMASTER_PIDFILE" sge_qmaster); then
    [ "$(pid_alive "$RUN/sge_qmaster.pid" sge_qmaster || true)" = "$pid" ] \
      || log "reusing sge_qmaster pid $pid, not started by up.sh (down.sh will leave it alone)"
  else
    /usr/sbin/sge_qmaster >"$LOGD/sge_qmaster.out" 2>&1 || die "sge_qmaster failed to start" "$LOGD/sge_qmaster.out" "${SGE_LOGS[@]}"
    wait_for 300 qconf -sh || die "sge_qmaster not answering after 30 s" "$LOGD/sge_qmaster.out" "${SGE_LOGS[@]}"
    cp "$SGE_QMASTER_PIDFILE" "$RUN/sge_qmaster.pid"
    pid=$(pid_alive "$SGE_QMASTER_PIDFILE" sge_qmaster) || die "sge_qmaster died" "${SGE_LOGS[@]}"
    cold=1
  fi

  # cluster config, each step idempotent (~1 s of qconf calls: skipped when this same qmaster
  # was configured by an earlier run; the marker names its pid)
  local slots=$SGE_SLOTS
  if [ "$RECHECK" = 1 ] || [ "$(cat "$RUN/sge.configured" 2>/dev/null)" != "$pid:$slots" ]; then
    sge_configure "$slots"
    echo "$(pid_alive "$SGE_QMASTER_PIDFILE" sge_qmaster):$slots" >"$RUN/sge.configured"
  fi
  epid=$(sge_execd_pid)
  if [ -n "$epid" ]; then
    [ "$(pid_alive "$RUN/sge_execd.pid" sge_execd || true)" = "$epid" ] \
      || log "reusing sge_execd pid $epid, not started by up.sh (down.sh will leave it alone)"
  else
    /usr/sbin/sge_execd >"$LOGD/sge_execd.out" 2>&1 || die "sge_execd failed to start" "$LOGD/sge_execd.out"
    for ((i = 0; i < 100; i++)); do epid=$(sge_execd_pid); [ -n "$epid" ] && break; sleep 0.1; done
    [ -n "$epid" ] || die "sge_execd did not write its pidfile in 10 s" "$LOGD/sge_execd.out" /var/spool/gridengine/execd/*/messages
    echo "$epid" >"$RUN/sge_execd.pid"
    cold=1
  fi
  # the queue instance reports load (state column empty, not 'u')
  sge_q_ok() { qstat -f -q "all.q@$HOST_F" | awk -v q="all.q@$HOST_F" '$1==q && NF==5 {f=1} END{exit !f}'; }
  wait_for 300 sge_q_ok || die "queue all.q@$HOST_F not available after 30 s: $(qstat -f 2>&1 | tail -n 2)" "${SGE_LOGS[@]}" /var/spool/gridengine/execd/*/messages
  SGE_DETAIL="all.q@$HOST_F $slots slots"
  if [ "$cold" = 1 ] || [ "$RECHECK" = 1 ]; then
    local out
    out=$(cd /tmp && timeout 60 qsub -sync y -b y -N testbed-smoke -o /dev/null -e /dev/null /bin/true 2>&1) \
      || die "qsub -sync y smoke job failed: $out" "${SGE_LOGS[@]}" /var/spool/gridengine/execd/*/messages
    grep -q 'exited with exit code 0' <<<"$out" || die "qsub -sync y smoke job: $out" "${SGE_LOGS[@]}"
    SGE_DETAIL="$SGE_DETAIL, qsub -sync y job ok"
  fi
}

# ============================================================================ sshd
SSHD=$TB_DIR/ssh
login_user() {  # login_user NAME: the unprivileged login user NAME (home under the state dir), key authorized
  local u=$1 home
  if ! getent passwd "$u" >/dev/null; then
    useradd -m -d "$TB_DIR/home/$u" -s /bin/bash -c "$USER_GECOS" "$u" || die "useradd $u failed"
    log "created user $u"
  elif [ "$(getent passwd "$u" | cut -d: -f5)" = "$USER_GECOS" ] && [ ! -d "$(ssh_home "$u")" ] \
       && [ "$(ssh_home "$u")" != "$TB_DIR/home/$u" ]; then
    # ours, left by a run with another (since deleted) NERO_TESTBED_DIR; a home that still
    # exists may be in use by another testbed, so it is never moved
    usermod -d "$TB_DIR/home/$u" "$u"
  fi
  home=$(ssh_home "$u")
  if [ ! -d "$home" ]; then   # state dir wiped but user kept
    install -d -m 0755 -o "$u" -g "$(id -gn "$u")" "$home"
    cp -rT /etc/skel "$home" && chown -R "$u:$(id -gn "$u")" "$home"
  fi
  # UsePAM=no => sshd refuses accounts whose password is locked ('!'); '*' = no password, not locked
  if [ "$(getent shadow "$u" | cut -d: -f2 | cut -c1)" = '!' ]; then usermod -p '*' "$u"; fi
  cmp -s "$SSHD/id_ed25519.pub" "$SSHD/authorized_keys/$u" \
    || install -m 0644 "$SSHD/id_ed25519.pub" "$SSHD/authorized_keys/$u"
}
up_sshd() {
  local cold=0 pid changed=0 new hostpub
  install -d -m 0755 "$SSHD" "$SSHD/authorized_keys" "$TB_DIR/home"
  install -d -m 0755 /run/sshd            # privilege-separation dir sshd insists on
  [ -s "$SSHD/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C nero-testbed-host -f "$SSHD/ssh_host_ed25519_key"
  [ -s "$SSHD/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C nero-testbed-client -f "$SSHD/id_ed25519"
  chmod 0600 "$SSHD/id_ed25519" "$SSHD/ssh_host_ed25519_key"

  # two logins with the same key: the test user, and a second one (two users on one host)
  login_user "$SSH_USER"
  login_user "$SSH_USER2"

  # known_hosts (OpenSSH and paramiko look up "[host]:port" for a non-22 port)
  hostpub=$(cut -d' ' -f1,2 "$SSHD/ssh_host_ed25519_key.pub")
  new=$(mktemp)
  printf '[127.0.0.1]:%s %s\n[localhost]:%s %s\n[%s]:%s %s\n' \
    "$SSH_PORT" "$hostpub" "$SSH_PORT" "$hostpub" "$SSH_ALIAS" "$SSH_PORT" "$hostpub" >"$new"
  install_if_changed 0644 "$new" "$SSHD/known_hosts" || true
  # ssh_config with a Host alias (for ~/.ssh/config alias support tests)
  cat >"$new" <<CONF
# generated by nero tests/testbed/up.sh: the test sshd as a Host alias
Host ${SSH_ALIAS}
    HostName 127.0.0.1
    Port ${SSH_PORT}
    User ${SSH_USER}
    IdentityFile ${SSHD}/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile ${SSHD}/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 10
CONF
  install_if_changed 0644 "$new" "$TB_DIR/ssh_config" || true

  cat >"$new" <<CONF
# generated by nero tests/testbed/up.sh -- private test sshd, loopback only, key-only
Port ${SSH_PORT}
ListenAddress 127.0.0.1
HostKey ${SSHD}/ssh_host_ed25519_key
PidFile ${RUN}/sshd.pid
AuthorizedKeysFile ${SSHD}/authorized_keys/%u
# keys live under /tmp (world-writable parents)
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers ${SSH_USER} ${SSH_USER2}
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
PermitUserEnvironment no
# SGE's CLI needs these; non-interactive sessions read no profile
SetEnv SGE_ROOT=${SGE_ROOT_DIR} SGE_CELL=${SGE_CELL_NAME}
MaxStartups 200:30:400
MaxSessions 200
LogLevel VERBOSE
Subsystem sftp internal-sftp
CONF
  /usr/sbin/sshd -t -f "$new" 2>"$LOGD/sshd-t.err" || { cp "$new" "$LOGD/sshd_config.rejected"; die "sshd -t rejected the config" "$LOGD/sshd-t.err"; }
  install_if_changed 0644 "$new" "$SSHD/sshd_config" && changed=1
  rm -f "$new"

  if pid=$(pid_alive "$RUN/sshd.pid" sshd); then
    if [ "$changed" = 1 ]; then kill -HUP "$pid"; sleep 0.3; log "sshd reloaded (pid $pid)"; cold=1; fi
  else
    port_open "$SSH_PORT" && die "port $SSH_PORT is taken by $(port_owner "$SSH_PORT") (not started by up.sh); set NERO_TESTBED_SSH_PORT"
    /usr/sbin/sshd -f "$SSHD/sshd_config" -E "$LOGD/sshd.log" || die "sshd failed to start" "$LOGD/sshd.log"
    wait_for 100 port_open "$SSH_PORT" || die "sshd not listening on $SSH_PORT" "$LOGD/sshd.log"
    cold=1
  fi

  # a real key login through the Host alias, host key checked, as the test user;
  # with the cluster CLIs that are up, exactly as nero will run them
  local remote='set -e; echo "user=$(id -un)"; test -w "$HOME"; cd; mkdir -p nero-work; test -w nero-work
python3 -c "import sys; assert sys.version_info >= (3, 8), sys.version" '
  local what="key login as $SSH_USER (alias $SSH_ALIAS), python3"
  if slurm_up; then
    remote+='
for c in sbatch squeue sacct scancel; do command -v $c >/dev/null; done
echo "sinfo=$(sinfo -h -o %T | head -n1)"; sacct -n -X -P -o JobID -j 1 >/dev/null'
    what+=", sinfo+sacct"
  fi
  if sge_up; then
    remote+='
for c in qsub qstat qacct qdel; do command -v $c >/dev/null; done
qstat -g c | grep -q "^all.q"; echo "qstat=ok"'
    what+=", qstat"
  fi
  local out out2
  out=$(timeout 30 ssh -F "$TB_DIR/ssh_config" "$SSH_ALIAS" "$remote" </dev/null 2>&1) \
    || die "ssh check failed: $out" "$LOGD/sshd.log"
  # the second login: the same alias and key, another user (`-l` wins over the alias's User)
  out2=$(timeout 30 ssh -F "$TB_DIR/ssh_config" -l "$SSH_USER2" "$SSH_ALIAS" \
         'set -e; echo "user=$(id -un)"; cd; mkdir -p nero-work; test -w nero-work' </dev/null 2>&1) \
    || die "ssh check as $SSH_USER2 failed: $out2" "$LOGD/sshd.log"
  SSHD_DETAIL="$what over ssh ok ($(tr '\n' ' ' <<<"$out")), second login: $out2"
}

# ============================================================================ smtp
up_smtp() {
  local pid
  mkdir -p "$TB_DIR/smtp"   # NB: not the maildir itself (Mailbox only makes cur/new/tmp in a new dir)
  if ! smtp_up; then
    port_open "$SMTP_PORT" && die "port $SMTP_PORT is taken by $(port_owner "$SMTP_PORT") (not started by up.sh); set NERO_TESTBED_SMTP_PORT"
    # Debian's python3-aiosmtpd + the system python: independent of any venv
    setsid /usr/bin/python3 -m aiosmtpd -n -l "127.0.0.1:$SMTP_PORT" \
      -c aiosmtpd.handlers.Mailbox "$TB_DIR/smtp/maildir" </dev/null >"$LOGD/aiosmtpd.log" 2>&1 &
    echo $! >"$RUN/aiosmtpd.pid"
    wait_for 100 port_open "$SMTP_PORT" || die "aiosmtpd not listening on $SMTP_PORT after 10 s" "$LOGD/aiosmtpd.log"
  fi
  local out
  out=$(/usr/bin/python3 - "$SMTP_PORT" <<'PY' 2>&1
import smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10) as s:
    code, banner = s.ehlo()
    assert code == 250, (code, banner)
    assert s.noop()[0] == 250
print(banner.decode().splitlines()[0])
PY
  ) || die "SMTP handshake failed: $out" "$LOGD/aiosmtpd.log"
  SMTP_DETAIL="127.0.0.1:$SMTP_PORT EHLO ok ($out), maildir $TB_DIR/smtp/maildir"
}

# ============================================================================ libreoffice
up_libreoffice() {
  if ! command -v soffice >/dev/null || ! command -v pdftoppm >/dev/null; then die "soffice/pdftoppm not installed"; fi
  local ver; ver=$(dpkg-query -W -f='${Version}' libreoffice-calc-nogui 2>/dev/null || echo '?')
  if [ "$RECHECK" != 1 ] && [ "$(cat "$TB_DIR/libreoffice/ok" 2>/dev/null)" = "$ver" ]; then
    LO_DETAIL="soffice $ver (converted ok before; NERO_TESTBED_RECHECK=1 to redo)"; return 0
  fi
  rm -f "$TB_DIR/libreoffice/ok"
  local d src py out
  mkdir -p "$TB_DIR/libreoffice"
  d=$(mktemp -d "$TB_DIR/libreoffice/smoke.XXXXXX")
  src=""
  for py in python3 /usr/bin/python3; do
    if "$py" - "$d/tiny.xlsx" <<'PY' >/dev/null 2>&1; then src=$d/tiny.xlsx; break; fi
import sys, openpyxl
wb = openpyxl.Workbook(); ws = wb.active; ws.title = "runs"
ws.append(["run", "loss"]); ws.append(["a", 0.5]); ws.append(["b", 0.25]); ws["C1"] = "=SUM(B2:B3)"
wb.save(sys.argv[1])
PY
  done
  local infilter=()
  if [ -z "$src" ]; then   # no openpyxl anywhere: a CSV does as well for the check
    printf 'run,loss\na,0.5\nb,0.25\n' >"$d/tiny.csv"; src=$d/tiny.csv; infilter=(--infilter=CSV:44,34,76,1)
  fi
  out=$(cd "$d" && HOME="$d/home" timeout 120 soffice --headless --norestore --nolockcheck \
        "-env:UserInstallation=file://$d/profile" "${infilter[@]}" --convert-to pdf --outdir "$d/out" "$src" 2>&1) \
    || die "soffice --convert-to pdf failed: $out"
  local pdf; pdf="$d/out/$(basename "${src%.*}").pdf"
  [ -s "$pdf" ] || die "soffice produced no PDF: $out"
  pdftoppm -png -r 50 -f 1 -l 1 "$pdf" "$d/page" || die "pdftoppm failed on $pdf"
  compgen -G "$d/page*.png" >/dev/null || die "pdftoppm wrote no PNG"
  rm -rf "$d"
  echo "$ver" >"$TB_DIR/libreoffice/ok"
  LO_DETAIL="soffice $ver: ${src##*.} -> pdf -> png ok"
}

# ============================================================================ chromium
up_chromium() {
  command -v chromium >/dev/null || die "chromium not installed"
  local ver; ver=$(dpkg-query -W -f='${Version}' chromium 2>/dev/null || echo '?')
  if [ "$RECHECK" != 1 ] && [ "$(cat "$TB_DIR/chromium/ok" 2>/dev/null)" = "$ver" ]; then
    CHROMIUM_DETAIL="chromium $ver (screenshot ok before; NERO_TESTBED_RECHECK=1 to redo)"; return 0
  fi
  rm -f "$TB_DIR/chromium/ok"
  local d out
  mkdir -p "$TB_DIR/chromium"
  d=$(mktemp -d "$TB_DIR/chromium/smoke.XXXXXX")
  mkdir -p "$d/home" "$d/profile"
  printf '<!doctype html><html><body style="background:#fff;font-family:sans-serif"><h1>nero testbed</h1><p style="color:#c00">red text</p></body></html>\n' >"$d/page.html"
  out=$(cd "$d" && HOME="$d/home" timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic \
        --no-first-run --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$d/profile" --window-size=640,360 --screenshot="$d/shot.png" "file://$d/page.html" 2>&1) \
    || die "chromium --headless --screenshot failed: $out"
  [ "$(head -c 8 "$d/shot.png" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] \
    || die "chromium wrote no PNG: $out"
  rm -rf "$d"
  echo "$ver" >"$TB_DIR/chromium/ok"
  CHROMIUM_DETAIL="chromium $ver: headless screenshot of a local HTML file ok"
}

# ============================================================================ main
install_packages
for svc in "${ORDER[@]}"; do
  wants "$svc" || continue
  t=$(now_ns)
  case "$svc" in
    slurm)       up_slurm;       say slurm ok "$(since "$t")" "$SLURM_DETAIL" ;;
    sge)         up_sge;         say sge ok "$(since "$t")" "$SGE_DETAIL" ;;
    sshd)        up_sshd;        say sshd ok "$(since "$t")" "$SSHD_DETAIL" ;;
    smtp)        up_smtp;        say smtp ok "$(since "$t")" "$SMTP_DETAIL" ;;
    libreoffice) up_libreoffice; say libreoffice ok "$(since "$t")" "$LO_DETAIL" ;;
    chromium)    up_chromium;    say chromium ok "$(since "$t")" "$CHROMIUM_DETAIL" ;;
  esac
done
write_env
say total ok "$(since "$T_ALL")" "env: . $TB_DIR/env.sh"
