# Sourced by the gpu_check_s*.sh scripts: `step NAME SECONDS COMMAND...` runs COMMAND under a timeout, tee'd to
# OUT/NAME.log, and appends its exit status, limit and duration as a JSON line to OUT/steps.jsonl; a failed step adds
# one to FAILED. With DRY set it prints the command instead. Needs OUT and FAILED set by the caller. The script ends
# with `finish_steps`, which exits with the number of failed steps.
# CALL_END (epoch seconds; unset: no cap) is when the device call must be done: a step's limit is cut to the time left
# (and a bench cell's task.cell_timeout_s to 15 s under it), and a step with under MIN_STEP_S (default 30) left is not
# started (recorded as skipped, and counted as failed), so scripts chained in one call share its limit:
# CALL_END=$(($(date +%s) + 570)) before the first.
step() {
  local name=$1 limit=$2; shift 2
  if [ -n "${CALL_END:-}" ]; then
    local left=$((CALL_END - $(date +%s)))
    if [ "$left" -lt "${MIN_STEP_S:-30}" ]; then
      echo "step $name not started: ${left} s left before CALL_END" >&2
      [ -n "${DRY:-}" ] || printf '{"metric": "gpu_check_step", "step": "%s", "rc": null, "skipped": "%s", %s}\n' \
        "$name" "$left s left before CALL_END" "\"limit_s\": $limit, \"seconds\": 0" >> "$OUT/steps.jsonl"
      FAILED=$((FAILED + 1)); return 0
    fi
    if [ "$left" -lt "$limit" ]; then  # a bench cell kills itself 15 s before (its error is then a record)
      limit=$left
      local arg args=() cell=$((limit - 15))
      for arg in "$@"; do
        [[ $arg == task.cell_timeout_s=* && ${arg#*=} -gt $cell ]] && arg=task.cell_timeout_s=$cell
        args+=("$arg")
      done
      set -- "${args[@]}"
    fi
  fi
  if [ -n "${DRY:-}" ]; then printf '%q ' timeout "$limit" "$@"; echo; return 0; fi
  local start=$SECONDS rc=0
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" || rc=$?
  printf '{"metric": "gpu_check_step", "step": "%s", "rc": %d, "timed_out": %s, "limit_s": %d, "seconds": %d}\n' \
    "$name" "$rc" "$([ "$rc" = 124 ] && echo true || echo false)" "$limit" "$((SECONDS - start))" >> "$OUT/steps.jsonl"
  [ "$rc" = 0 ] || FAILED=$((FAILED + 1))
}
finish_steps() {  # the step logs and steps.jsonl into OUT/logs.tar.gz: a device call brings back 8 files at most
  # (session 17's gpu_check_s16.sh left steps.jsonl and three logs behind), and each script's records are fewer
  if [ -z "${DRY:-}" ]; then
    (cd "$OUT" && tar czf logs.tar.gz steps.jsonl ./*.log && rm steps.jsonl ./*.log)
  fi
  exit "$FAILED"
}
