# Sourced by the recipes (run.sh, local/anytime.sh); needs their log function.
#
# side_by_side N LOG_DIR FUNCTION NAME...: FUNCTION NAME for each NAME, N at a time, each with its share of the
# cores (torch threads that outnumber the cores spin against each other) and its output in LOG_DIR/NAME.log;
# fails once all have ended if any failed, showing its log's end.
side_by_side() {
  local at_once=$1 log_dir=$2 fn=$3 name failed=0
  shift 3
  mkdir -p "${log_dir}"
  for name in "$@"; do
    rm -f "${log_dir}/${name}.rc"
    while [ "$(jobs -rp | wc -l)" -ge "${at_once}" ]; do wait -n || true; done
    ( set +e; OMP_NUM_THREADS=$(( $(nproc) / at_once > 1 ? $(nproc) / at_once : 1 )) "${fn}" "${name}" \
        > "${log_dir}/${name}.log" 2>&1
      echo $? > "${log_dir}/${name}.rc" ) &
  done
  wait
  for name in "$@"; do
    if [ "$(cat "${log_dir}/${name}.rc" 2>/dev/null)" != 0 ]; then
      log "error: ${fn} ${name} failed (${log_dir}/${name}.log):"
      tail -n 20 "${log_dir}/${name}.log"
      failed=1
    fi
  done
  return "${failed}"
}
