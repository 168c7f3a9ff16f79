#!/usr/bin/env bash
# Run pytest from the project's environment. Exit code 5 ("no tests collected") is
# reported and passed on: a suite that silently tests nothing must not look green.
set -u
cd "$(dirname "$0")/.." || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests for: $*" >&2
fi
exit "$rc"
