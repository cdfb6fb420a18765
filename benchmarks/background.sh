#!/usr/bin/env bash
# Run a device session's benchmark commands one after another in the background, so the whole
# batch can outlast one 10-minute device command; later commands poll it.
#   bash benchmarks/background.sh start "cmd 1" "cmd 2" ...   # returns at once
#   bash benchmarks/background.sh poll SECONDS                 # wait up to SECONDS, copy logs to $OUT
# The device machine goes back (and the batch with it) ~30 s after a command ends: poll in the
# same command that starts the batch, and call the next poll at once.
set -u
LOGS=/tmp/shardserve-bg
case "$1" in
  start)
    shift
    rm -rf "$LOGS" && mkdir -p "$LOGS"
    printf '%s\n' "$@" > "$LOGS/commands"
    setsid bash -c '
      i=0
      while IFS= read -r cmd; do
        i=$((i + 1)); mkdir -p '"$LOGS"'/$i
        echo "== $i: $cmd (at $(date +%T))" >> '"$LOGS"'/progress
        OUT='"$LOGS"'/$i PYTHONUNBUFFERED=1 bash -c "$cmd" > '"$LOGS"'/$i/log 2>&1
        echo "== $i: rc $? (at $(date +%T))" >> '"$LOGS"'/progress
      done < '"$LOGS"'/commands
      touch '"$LOGS"'/done' < /dev/null > /dev/null 2>&1 &
    echo started ;;
  poll)
    end=$((SECONDS + $2))
    while [ ! -e "$LOGS/done" ] && [ $SECONDS -lt $end ]; do sleep 5; done
    cat "$LOGS/progress"
    for d in "$LOGS"/*/; do  # two files back, whatever the number of commands
      echo "######## $(basename "$d")" | tee -a "$OUT/logs.txt" >> "$OUT/results.txt"
      tail -c 2000000 "$d/log" >> "$OUT/logs.txt"
      cat "$d"/results.json >> "$OUT/results.txt" 2>/dev/null
      find "$d" -maxdepth 2 -name '*.json' ! -name results.json -size -200k -exec sh -c 'echo "## $1"; cat "$1"' _ {} \; >> "$OUT/results.txt"
    done
    [ -e "$LOGS/done" ] && echo ALL-DONE || echo STILL-RUNNING ;;
esac
