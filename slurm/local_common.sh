# Shared by start_local_slurm.sh and stop_local_slurm.sh (sourced, not run): paths, logging, and the pid-file
# helpers. Every daemon this project starts is tracked by $RUN/<name>.pid plus a $RUN/<name>.ours marker, so the
# stop script ends only what the start script started, by pid.
ACCOUNTING=${SLURM_LOCAL_ACCOUNTING:-1}
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
URGENT=${SLURM_LOCAL_URGENT_PARTITION:-urgent}
CLUSTER=${SLURM_LOCAL_CLUSTER:-varbench}
TIMEOUT=${SLURM_LOCAL_READY_TIMEOUT:-60}
FAKE_GPUS=${SLURM_LOCAL_FAKE_GPUS:-0}
BASE=${SLURM_LOCAL_DIR:-/var/lib/varbench-slurm}   # the state dir: everything but /etc/slurm and munge
STATE=$BASE/state                                  # slurmctld state + slurmd spool
RUN=$BASE/run                                      # pid files + "started by us" markers
LOG=$BASE/log
CONF=/etc/slurm/slurm.conf                         # the Slurm tools read /etc/slurm: no SLURM_CONF to export
DBDCONF=/etc/slurm/slurmdbd.conf
GRESCONF=/etc/slurm/gres.conf
MARK="# managed by varbench slurm/start_local_slurm.sh"
MYSQL_SOCK=/run/mysqld/mysqld.sock
DBNAME=varbench_slurm_acct   # our own database: safe to drop

log() { echo "local_slurm: $*" >&2; }
fail() { echo "local_slurm: ERROR: $*" >&2; exit 1; }   # precondition errors: no log dump
die() {
  echo "local_slurm: ERROR: $*" >&2
  local f
  for f in "$LOG"/*.log; do
    [ -s "$f" ] && { echo "---- last lines of $f" >&2; tail -n 15 "$f" >&2; }
  done
  exit 1
}
[ "$(id -u)" = 0 ] || fail "must run as root (the daemons and the package install need it)"

pid_of() { [ -s "$RUN/$1.pid" ] && cat "$RUN/$1.pid" || true; }
alive() {  # alive NAME COMM : pid file exists, the process lives, and its command name matches (no stale pid reuse)
  local p; p=$(pid_of "$1")
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$2" ]
}
stop_one() {  # stop_one NAME COMM : only if we started it, only by its pid file
  local name=$1 comm=$2 p
  [ -e "$RUN/$name.ours" ] || return 0
  p=$(pid_of "$name")
  if [ -n "$p" ] && alive "$name" "$comm"; then
    kill "$p" 2>/dev/null || true
    for _ in $(seq 1 80); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$p" 2>/dev/null; then log "$name (pid $p) ignored SIGTERM for 20s, sending SIGKILL"; kill -9 "$p" 2>/dev/null || true; fi
    log "stopped $name (pid $p)"
  fi
  rm -f "$RUN/$name.ours" "$RUN/$name.pid"
}
cancel_jobs() {
  # slurmstepd and job processes outlive slurmd, and a job that ends while slurmd is down stays "RUNNING" for
  # slurmctld: cancel every job and let it end before the daemons stop
  [ "${SLURM_LOCAL_KEEP_JOBS:-0}" = 1 ] && return 0
  alive slurmctld slurmctld && [ -e "$RUN/slurmctld.ours" ] || return 0
  local ids; ids=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  [ -n "${ids// /}" ] || return 0
  log "cancelling jobs: $ids"
  scancel $ids 2>/dev/null || true
  local end=$((SECONDS + 30))
  while [ -n "$(squeue -h -o %A 2>/dev/null)" ] && [ $SECONDS -lt $end ]; do sleep 0.5; done
  [ -z "$(squeue -h -o %A 2>/dev/null)" ] || log "warning: jobs still listed after 30s: $(squeue -h -o '%A %T' | tr '\n' ' ')"
}
