#!/usr/bin/env bash
# Start a REAL single-node Slurm (Debian's slurm-wlm 22.05 + munge, plus slurmdbd + MariaDB so that `sacct`
# works) on this machine, for the tests and for trying cluster=slurm locally. Run as root; no systemd, no cgroups
# (proctrack/linuxproc, task/none). Installs the packages with apt-get when they are missing. Idempotent: a second
# run finds the daemons alive and only re-checks them. Stop with slurm/stop_local_slurm.sh.
#
# Partitions: 'debug' (default, preemptible: PreemptMode=REQUEUE) and 'urgent' (its jobs preempt debug's).
# Knobs (environment): SLURM_LOCAL_DIR (state dir: pids, logs, spool; default /var/lib/varbench-slurm),
#   SLURM_LOCAL_ACCOUNTING=1 (0: no slurmdbd/MariaDB; then submitit cannot see a job that died without a result
#   and waits forever: keep it on), SLURM_LOCAL_CPUS (advertised CPUs; default the real count),
#   SLURM_LOCAL_FAKE_GPUS=0 (n>0: n /dev/null-like GPUs so gpus_per_node jobs schedule), SLURM_LOCAL_READY_TIMEOUT=60.
# Adapted from shared/reference/slurm/slurm_local_recipe.sh; what was learned is in slurm/README.md.
set -euo pipefail
. "$(dirname "$0")/local_common.sh"

wait_for() {  # wait_for DESCRIPTION CMD... : poll CMD until it succeeds or $TIMEOUT s pass
  local what=$1; shift
  local end=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $end ] && die "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.25
  done
}
wait_daemon() {  # wait_daemon NAME DESCRIPTION CMD... : like wait_for, but fail fast when daemon NAME dies
  local name=$1 what=$2; shift 2
  local end=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    alive "$name" "$name" || die "$name died while starting (see $LOG/$name.log)"
    [ $SECONDS -ge $end ] && die "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.25
  done
}
exec_clean() {  # exec_clean OUTFILE CMD... : exec CMD with stdio on /dev/null/OUTFILE and NO other inherited fds,
  local out=$1 fd; shift  # so a daemon never holds a CI log pipe open (the runner would wait for EOF forever)
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}
    if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
  exec "$@" </dev/null >>"$out" 2>&1
}
detached() { ( exec_clean "$@" ); }   # for daemons that fork by themselves

install_pkgs() {
  local pkgs="slurmctld slurmd slurm-client munge" missing="" p
  [ "$ACCOUNTING" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
  for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  log "installing:$missing"
  # package scripts must not start services (no systemd here): a policy-rc.d that denies, if the image has none
  local made_policy=0 ok=1
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >"$LOG/apt.log" 2>&1 || ok=0
  [ $ok = 1 ] && { apt-get install -y -qq --no-install-recommends $missing >>"$LOG/apt.log" 2>&1 || ok=0; }
  [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ $ok = 1 ] || { tail -n 20 "$LOG/apt.log" >&2; die "apt-get failed (see $LOG/apt.log)"; }
}

write_config() {
  local host cpus mem realcpus
  host=$(hostname -s)
  [ -n "$host" ] || fail "hostname -s is empty"
  realcpus=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -n1)
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)
  [ -n "$realcpus" ] && [ -n "$mem" ] || die "slurmd -C did not report CPUs/RealMemory"
  cpus=${SLURM_LOCAL_CPUS:-$realcpus}
  mem=$((mem * 90 / 100))     # a little below the real value, or the node is drained ("Low RealMemory")
  for f in "$CONF" "$DBDCONF" "$GRESCONF"; do
    if [ -e "$f" ] && ! grep -qF "$MARK" "$f"; then fail "$f exists and was not written by this script; move it away first"; fi
  done
  mkdir -p /etc/slurm
  cat > "$CONF.tmp" <<CONF
$MARK
ClusterName=$CLUSTER
# the explicit address: no /etc/hosts entry needed for the host name
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=cred_expire=10
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# the defaults wait 3 s before scheduling a batch job and ~30 s between backfill passes
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=2,bf_interval=2
ReturnToService=2
# a job in '$URGENT' preempts (requeues) jobs in '$PARTITION': they get their --signal (submitit: USR2) first,
# then SIGTERM, and SIGKILL after GraceTime
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
KillWait=5
MailProg=/bin/true
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
CONF
  if [ "$ACCOUNTING" = 1 ]; then
    printf 'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\n' >> "$CONF.tmp"
  else
    printf 'AccountingStorageType=accounting_storage/none\n' >> "$CONF.tmp"
  fi
  [ "$cpus" != "$realcpus" ] && printf 'SlurmdParameters=config_overrides\n' >> "$CONF.tmp"
  local gres=""
  if [ "$FAKE_GPUS" -gt 0 ] 2>/dev/null; then
    # Slurm drops a GPU without File=, and wants a device node there: /dev/null look-alikes
    mkdir -p "$RUN/fakegpu"
    local i
    for i in $(seq 0 $((FAKE_GPUS - 1))); do
      [ -c "$RUN/fakegpu/nvidia$i" ] || mknod "$RUN/fakegpu/nvidia$i" c 1 3 || die "mknod for a fake GPU failed"
    done
    printf '%s\nName=gpu File=%s/fakegpu/nvidia[0-%d]\n' "$MARK" "$RUN" $((FAKE_GPUS - 1)) > "$GRESCONF"
    printf 'GresTypes=gpu\n' >> "$CONF.tmp"
    gres=" Gres=gpu:$FAKE_GPUS"
  elif [ -e "$GRESCONF" ]; then
    rm -f "$GRESCONF"
  fi
  cat >> "$CONF.tmp" <<CONF
NodeName=$host NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN$gres
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=20
PartitionName=$URGENT Nodes=$host Default=NO MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
CONF
  mv "$CONF.tmp" "$CONF"; chmod 644 "$CONF"
  if [ "$ACCOUNTING" = 1 ]; then
    cat > "$DBDCONF" <<CONF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=$DBNAME
CONF
    chmod 600 "$DBDCONF"    # slurmdbd refuses a world-readable config
  fi
}

munge_ok() { munge -n -t 10 2>/dev/null | unmunge >/dev/null 2>&1; }
start_munge() {
  if munge_ok; then
    [ -e "$RUN/munged.ours" ] || log "a munged not started by this script answers; using it (stop leaves it alone)"
    return 0
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key || die "mungekey failed"
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key; chmod 700 /etc/munge; chmod 600 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge; chmod 755 /run/munge
  # --force: take over a stale socket left by a killed munged
  detached /dev/null runuser -u munge -- /usr/sbin/munged --force --pid-file=/run/munge/munged.pid \
    --log-file=/var/log/munge/munged.log || die "munged failed to start (see /var/log/munge/munged.log)"
  wait_for "munged" munge_ok
  cp /run/munge/munged.pid "$RUN/munged.pid"; touch "$RUN/munged.ours"
  log "started munged (pid $(pid_of munged))"
}

mysql_ok() { mariadb-admin --socket="$MYSQL_SOCK" ping; }
start_mariadb() {
  if mysql_ok >/dev/null 2>&1; then
    [ -e "$RUN/mariadb.ours" ] || log "a MariaDB not started by this script answers on $MYSQL_SOCK; using it"
    return 0
  fi
  mkdir -p /run/mysqld; chown mysql:root /run/mysqld
  if [ ! -d /var/lib/mysql/mysql ]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$LOG/mariadb-install.log" 2>&1 \
      || die "mariadb-install-db failed (see $LOG/mariadb-install.log)"
  fi
  # a subshell that exec's mariadbd in the background, so $! is mariadbd's pid; unix socket only, root by socket auth
  exec_clean "$LOG/mariadb.log" setsid /usr/sbin/mariadbd --user=mysql --skip-networking \
    --socket="$MYSQL_SOCK" --pid-file=/run/mysqld/varbench-slurm.pid &
  echo $! > "$RUN/mariadb.pid"; touch "$RUN/mariadb.ours"
  wait_for "MariaDB" mysql_ok
  alive mariadb mariadbd || die "mariadbd pid $(pid_of mariadb) is not the running server"
  log "started mariadbd (pid $(pid_of mariadb))"
}

start_slurm_daemon() {  # start_slurm_daemon NAME : the daemon forks and writes $RUN/NAME.pid itself
  local name=$1
  if alive "$name" "$name"; then return 0; fi
  rm -f "$RUN/$name.pid"
  detached /dev/null "/usr/sbin/$name" || die "$name failed to start (see $LOG/$name.log)"
  wait_for "$name pid file" test -s "$RUN/$name.pid"
  touch "$RUN/$name.ours"
  alive "$name" "$name" || die "$name exited right after starting"
  log "started $name (pid $(pid_of "$name"))"
}

conf_sum() { local f; for f in "$CONF" "$DBDCONF" "$GRESCONF"; do if [ -e "$f" ]; then cat "$f"; fi; done | md5sum; }
node_state() { sinfo -h -n "$(hostname -s)" -o %t 2>/dev/null | head -n1; }
node_ready() { case "$(node_state)" in idle|mix|alloc|comp) return 0;; *) return 1;; esac; }

t0=$SECONDS fresh=0
# no controller state yet = a new cluster: its job ids restart at 1, so old accounting rows must go too
[ -z "$(ls -A "$STATE/ctld" 2>/dev/null)" ] && fresh=1
mkdir -p "$STATE/ctld" "$STATE/d" "$RUN" "$LOG"
install_pkgs
t_inst=$SECONDS
before=$(conf_sum)
write_config
if [ "$before" != "$(conf_sum)" ]; then
  # a daemon started with the old config refuses to talk to one with the new ("different slurm.conf"): restart all
  for n in slurmd slurmctld slurmdbd; do
    if alive "$n" "$n"; then
      [ -e "$RUN/$n.ours" ] || fail "the config changed but $n (pid $(pid_of "$n")) was not started by this script"
      log "config changed: restarting $n"; stop_one "$n" "$n"
    fi
  done
fi
start_munge
if [ "$ACCOUNTING" = 1 ]; then
  start_mariadb
  if [ $fresh = 1 ] && ! alive slurmdbd slurmdbd; then
    mariadb --socket="$MYSQL_SOCK" -e "DROP DATABASE IF EXISTS $DBNAME" || die "could not reset $DBNAME"
  fi
  start_slurm_daemon slurmdbd
  wait_daemon slurmdbd "slurmdbd to answer" sacctmgr -n -i list cluster
fi
start_slurm_daemon slurmctld
wait_daemon slurmctld "slurmctld to answer" scontrol ping
start_slurm_daemon slurmd
end=$((SECONDS + TIMEOUT)) resumed=0
until node_ready; do
  case "$(node_state)" in
    down*|drain*|drng*|fail*)
      if [ $resumed = 0 ]; then
        log "node is $(node_state); scontrol update state=resume"
        scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true; resumed=1
      fi;;
  esac
  [ $SECONDS -ge $end ] && die "node not ready after ${TIMEOUT}s (state '$(node_state)'; reason: $(sinfo -h -R 2>/dev/null))"
  sleep 0.25
done
# end to end: a real job step through slurmctld -> slurmd -> slurmstepd
timeout 60 srun -p "$PARTITION" -N1 -n1 -t 1 --quiet true || die "self-test 'srun true' failed"
if [ "$ACCOUNTING" = 1 ]; then sacct -n -X -o JobID >/dev/null 2>&1 || die "sacct does not work"; fi
log "ready: partition '$PARTITION' (default) and '$URGENT' on $(hostname -s) ($(sinfo -h -p "$PARTITION" -o '%c CPUs, %m MB, gres %G')); accounting=$ACCOUNTING; install $((t_inst - t0))s, total $((SECONDS - t0))s; state in $BASE"
