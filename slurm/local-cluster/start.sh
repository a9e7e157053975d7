#!/bin/bash
# Start a one-node Slurm cluster (munged, slurmctld, slurmd) with all its state under $BASE,
# then wait until the node takes jobs. Client commands find it through SLURM_CONF (printed).
#   BASE   state folder (default /tmp/podlt-slurm)   CPUS  CPUs advertised (default 64)
#   PORT   slurmctld's port; slurmd uses PORT+1 (default 6817)
set -euo pipefail
BASE=${BASE:-/tmp/podlt-slurm}
CPUS=${CPUS:-64}
PORT=${PORT:-6817}
HERE=$(cd "$(dirname "$0")" && pwd)
for exe in munged slurmctld slurmd sinfo; do
  command -v "$exe" >/dev/null || [ -x "/usr/sbin/$exe" ] || {
    echo "start.sh: $exe not found; run $HERE/install.sh first (as root)" >&2; exit 1; }
done
for pid in "$BASE"/run/*.pid; do
  if [ -s "$pid" ] && kill -0 "$(cat "$pid")" 2>/dev/null; then
    echo "start.sh: already running ($pid); stop it with $HERE/stop.sh" >&2; exit 1
  fi
done
mkdir -p "$BASE"/{etc,run,log,state,spool,munge}
chmod 0755 "$BASE" "$BASE/run"
chmod 0700 "$BASE/munge"
mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)  # MB, so --mem requests fit
sed -e "s|@HOST@|$(hostname -s)|g" -e "s|@BASE@|$BASE|g" -e "s|@MEM@|$mem|g" \
    -e "s|@CPUS@|$CPUS|g" -e "s|@PORT1@|$((PORT + 1))|g" -e "s|@PORT@|$PORT|g" \
    "$HERE/slurm.conf.in" > "$BASE/etc/slurm.conf"
export SLURM_CONF="$BASE/etc/slurm.conf"
# A private munge key and socket: the system's munge (if any) is neither used nor touched.
[ -s "$BASE/etc/munge.key" ] || head -c 1024 /dev/urandom > "$BASE/etc/munge.key"
chmod 0400 "$BASE/etc/munge.key"
/usr/sbin/munged --socket="$BASE/run/munge.socket" --key-file="$BASE/etc/munge.key" \
  --pid-file="$BASE/run/munged.pid" --log-file="$BASE/log/munged.log" \
  --seed-file="$BASE/munge/seed"
munge -S "$BASE/run/munge.socket" -n | unmunge -S "$BASE/run/munge.socket" >/dev/null
/usr/sbin/slurmctld -f "$SLURM_CONF"
/usr/sbin/slurmd -f "$SLURM_CONF"
for _ in $(seq 1 120); do
  state=$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)
  if [ "$state" = idle ]; then
    echo "local Slurm cluster up: $(hostname -s), $CPUS CPUs; export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.5
done
echo "start.sh: the node is not idle after 60 s (state: ${state:-unknown}); logs in $BASE/log" >&2
tail -n 20 "$BASE/log/slurmctld.log" "$BASE/log/slurmd.log" >&2 || true
exit 1
