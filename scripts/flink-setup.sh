#!/usr/bin/env bash
# `make flink`: fetch Beam's Flink job server (Beam 2.62.0, Flink 1.19) through Maven
# into a cache outside the repository, check every jar against the committed list
# images/flink/jars.sha256, and leave a runnable job server:
#
#   ${XDG_CACHE_HOME:-~/.cache}/cdcflow/flink/2.62.0/
#       cdcflow-flink-job-server.jar   thin jar: Main-Class FlinkJobServerDriver,
#                                      Class-Path lib/*.jar (java -jar runs it)
#       lib/*.jar                      the runner and every runtime dependency
#
# Why this shape:
# * Maven Central serves no beam-runners-flink-*-job-server jar here; it serves the
#   runner with all its dependencies, for Beam 2.62.0 (see docs/runners.md).
# * Nothing is downloaded when a pipeline runs: `cdcflow consume --runner flink`
#   only looks in this cache (or CDCFLOW_FLINK_JOB_SERVER_JAR) and says to run
#   `make flink` when it is missing. A second run of this script only re-checks.
# * Maven checks each file against the repository's own checksums (-C, strict);
#   the committed sha256 list pins the exact jar set, so a changed or extra jar fails.
#
# Options: --update-lock rewrites images/flink/jars.sha256 from what Maven fetched
# (when the pom changes); --print-dir prints the job-server folder and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
POM=$ROOT/images/flink/pom.xml
LOCK=$ROOT/images/flink/jars.sha256
BEAM_VERSION=$(sed -n 's:.*<beam.version>\(.*\)</beam.version>.*:\1:p' "$POM")
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/cdcflow/flink
DEST=$CACHE/$BEAM_VERSION
JAR=cdcflow-flink-job-server.jar
UPDATE_LOCK=0

for arg in "$@"; do
  case $arg in
    --update-lock) UPDATE_LOCK=1 ;;
    --print-dir) echo "$DEST"; exit 0 ;;
    *) echo "flink-setup: unknown option $arg (known: --update-lock, --print-dir)" >&2; exit 2 ;;
  esac
done

log() { echo "flink-setup: $*"; }
fail() { echo "flink-setup: $*" >&2; exit 1; }

if ! command -v java >/dev/null 2>&1; then
  fail "java not found: the Flink runner needs Java 17 (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
fi
java_major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
if [ "${java_major%%.*}" -lt 11 ] 2>/dev/null; then
  fail "java $java_major found, the Flink runner needs Java 17 (11 at least)"
fi

# Checks DEST against the lock: every listed file present with its checksum, no other jar.
verify() {
  local dir=$1
  [ -f "$dir/$JAR" ] || return 1
  (cd "$dir" && sha256sum --check --quiet --strict "$LOCK") >/dev/null 2>&1 || return 1
  local listed present
  listed=$(awk '{print $2}' "$LOCK" | sort)
  present=$(cd "$dir" && { echo "$JAR"; find lib -name '*.jar' | sort; } | sort)
  [ "$listed" = "$present" ]
}

summary() {
  local dir=$1 count size
  count=$(find "$dir/lib" -name '*.jar' | wc -l)
  size=$(du -sm "$dir" | cut -f1)
  log "job server ready: $dir/$JAR ($count jars in lib/, $size MB)"
}

if [ "$UPDATE_LOCK" -eq 0 ] && [ -f "$LOCK" ] && verify "$DEST"; then
  summary "$DEST"
  exit 0
fi

if ! command -v mvn >/dev/null 2>&1; then
  fail "mvn not found: fetching the Flink job server needs Maven 3 (Debian/Ubuntu: apt-get install maven); or set CDCFLOW_FLINK_JOB_SERVER_JAR to a job-server jar you have"
fi

started=$(date +%s)
mkdir -p "$CACHE"
BUILD=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$BUILD"' EXIT
cp "$POM" "$BUILD/pom.xml"
log "fetching Beam $BEAM_VERSION's Flink runner and its dependencies through Maven (about 150 MB the first time; cached in $CACHE/m2) ..."
if ! mvn -B -q -C -f "$BUILD/pom.xml" -Dmaven.repo.local="$CACHE/m2" package >"$BUILD/mvn.log" 2>&1; then
  tail -n 30 "$BUILD/mvn.log" >&2
  fail "Maven could not fetch the job server (log above); Maven Central must be reachable"
fi
STAGE=$CACHE/.stage-$BEAM_VERSION
rm -rf "$STAGE"
mkdir -p "$STAGE"
mv "$BUILD/target/$JAR" "$STAGE/$JAR"
mv "$BUILD/target/lib" "$STAGE/lib"

if [ "$UPDATE_LOCK" -eq 1 ]; then
  (cd "$STAGE" && { echo "$JAR"; find lib -name '*.jar' | sort; } | xargs sha256sum) >"$LOCK"
  log "wrote $LOCK ($(wc -l <"$LOCK") files)"
elif ! verify "$STAGE"; then
  (cd "$STAGE" && sha256sum --check --quiet "$LOCK" 2>&1 | head -n 10) >&2 || true
  fail "the fetched jars do not match $LOCK (above: what differs); if the pom changed on purpose, run: scripts/flink-setup.sh --update-lock"
fi
rm -rf "$DEST"
mv "$STAGE" "$DEST"
log "fetched in $(( $(date +%s) - started )) s"
summary "$DEST"
