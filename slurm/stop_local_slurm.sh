#!/usr/bin/env bash
# Stop the local Slurm that slurm/start_local_slurm.sh started: cancel the jobs left, then end each daemon by its
# pid file (never by name), newest first. Daemons this project did not start are left alone. `--purge` also removes
# the state dir, the config files it wrote and its accounting database (the next start is a fresh cluster).
set -euo pipefail
. "$(dirname "$0")/local_common.sh"

purge=0
[ "${1:-}" = "--purge" ] && purge=1
cancel_jobs
stop_one slurmd slurmd
stop_one slurmctld slurmctld
stop_one slurmdbd slurmdbd
if [ $purge = 1 ] && [ -e "$RUN/mariadb.ours" ] && mariadb-admin --socket="$MYSQL_SOCK" ping >/dev/null 2>&1; then
  mariadb --socket="$MYSQL_SOCK" -e "DROP DATABASE IF EXISTS $DBNAME" || log "could not drop $DBNAME"
fi
stop_one mariadb mariadbd
stop_one munged munged
if [ $purge = 1 ]; then
  for f in "$CONF" "$DBDCONF" "$GRESCONF"; do if [ -e "$f" ] && grep -qF "$MARK" "$f"; then rm -f "$f"; fi; done
  rm -rf "$STATE" "$LOG" "$RUN/fakegpu"
  log "purged $STATE, $LOG and the config files"
fi
