#!/usr/bin/env bash
# `make test-distributed`: the docker-compose.yaml topology (CeleryExecutor, Redis, PostgreSQL, two
# workers) run natively on loopback, with jira_inbox and jira_sweep run by the scheduler.
# Extra arguments go to pytest. Logs stay in the printed directory when the run fails.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  echo "no $PY: run \`make venv\` first (or \`make test-distributed\`, which does)" >&2
  exit 2
fi
bash scripts/install_system_deps.sh
bash scripts/install_distributed_deps.sh

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/jms-distributed.XXXXXX")
export JMS_DISTRIBUTED_ROOT="$run_dir"
export JMS_PROCESS_LEDGER="$run_dir/process-groups"
pytest_status=255

# pytest stops everything it started, even when a test fails (exit 1). Any other ending (killed,
# interrupted, internal error) may have skipped its teardown: then every process group it recorded
# gets SIGTERM, SIGKILL 15 s later, and the scratch directories it recorded are removed.
sweep_leftovers() {
  [ -s "$JMS_PROCESS_LEDGER" ] || return 0
  local kind value name pgid alive groups=() dirs=()
  while IFS=$'\t' read -r kind value name; do
    case "$kind" in
      group) groups+=("$value:$name") ;;
      dir) dirs+=("$value") ;;
    esac
  done <"$JMS_PROCESS_LEDGER"
  local left=()
  for entry in "${groups[@]}"; do
    pgid=${entry%%:*}
    if kill -0 -- "-$pgid" 2>/dev/null; then
      echo "stopping leftover ${entry#*:} (process group $pgid)" >&2
      kill -TERM -- "-$pgid" 2>/dev/null || true
      left+=("$pgid")
    fi
  done
  for _ in $(seq 150); do
    alive=0
    for pgid in "${left[@]}"; do kill -0 -- "-$pgid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pgid in "${left[@]}"; do kill -KILL -- "-$pgid" 2>/dev/null || true; done
  for dir in "${dirs[@]}"; do
    case "$dir" in
      "${TMPDIR:-/tmp}"/jms-*) rm -rf -- "$dir" ;;
    esac
  done
}

finish() {
  local status=$?
  trap - EXIT INT TERM
  if [ "$pytest_status" != 0 ] && [ "$pytest_status" != 1 ]; then
    sweep_leftovers
  fi
  if [ "$status" = 0 ]; then
    rm -rf "$run_dir"
  else
    echo "test-distributed failed; component and task logs are in $run_dir" >&2
  fi
  exit "$status"
}
trap finish EXIT

started=$(date +%s)
# pytest runs in the background so that a signal reaches this script at once (bash defers traps
# while a foreground command runs); the script hands it on as SIGTERM, which tests_distributed's
# conftest turns into KeyboardInterrupt, so the fixtures still stop the stack.
"$PY" -m pytest tests_distributed "$@" &
pytest_pid=$!
trap 'kill -TERM "$pytest_pid" 2>/dev/null || true' INT TERM
while :; do
  set +e
  wait "$pytest_pid"
  pytest_status=$?
  set -e
  # A wait cut short by a trapped signal returns >128 while pytest is still tearing down.
  kill -0 "$pytest_pid" 2>/dev/null || break
done
echo "test-distributed: pytest exited $pytest_status after $(( $(date +%s) - started )) s"
exit "$pytest_status"
