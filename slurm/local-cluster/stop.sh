#!/bin/bash
# Stop the cluster started by start.sh: cancel its jobs, then stop slurmd, slurmctld and munged
# by the PIDs in their pid files. CLEAN=1 also removes its state, for a fresh start.
BASE=${BASE:-/tmp/podlt-slurm}
export SLURM_CONF="$BASE/etc/slurm.conf"
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if running "$BASE/run/slurmctld.pid"; then
  jobs=$(squeue -h -o %i 2>/dev/null)
  if [ -n "$jobs" ]; then
    scancel $jobs
    for _ in $(seq 1 60); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi
for name in slurmd slurmctld munged; do
  pidfile="$BASE/run/$name.pid"
  running "$pidfile" || { rm -f "$pidfile"; continue; }
  pid=$(cat "$pidfile")
  kill -TERM "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { echo "stop.sh: $name ($pid) ignored SIGTERM for 10 s, killing it"; kill -KILL "$pid"; }
  rm -f "$pidfile"
  echo "stopped $name ($pid)"
done
if [ "${CLEAN:-0}" = 1 ]; then
  rm -rf "$BASE"/{run,log,state,spool,munge,etc/slurm.conf}
fi
