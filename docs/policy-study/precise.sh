#!/usr/bin/env bash
# Regenerates docs/policy-study/precise.{md,csv,png}: policy=precise against default, steady and
# thrifty on every public scenario and our own three, averaged over target positions (and, for the
# silent-rot cases, over challenge seeds: runtime.start_unix_ms moves every sample window).
# Usage: bash docs/policy-study/precise.sh [study dir, default study/precise]   (360 jobs, about 15 min on 2 shared cores)
set -euo pipefail
out=${1:-study/precise}
pols=default,steady,thrifty,precise
t0=1767225600000
run() {  # run <name> <overrides...>
  local name=$1; shift
  python -m distfs_pipeline -m hydra/launcher=joblib hydra.launcher.n_jobs=2 runtime.progress=never \
    hydra.sweep.dir="$out/$name" policy=$pols "$@" >"$out/$name.log" 2>&1 || echo "sweep $name: see $out/$name.log"
}
mkdir -p "$out"
run bit_rot scenario=bit_rot 'scenario.faults.0.target_index=range(0,5)' \
  "runtime.start_unix_ms=$t0,$((t0 + 1)),$((t0 + 2)),$((t0 + 3))"
run lost_blob scenario=lost_blob 'scenario.faults.0.target_index=range(0,40,4)'
run torn_write scenario=torn_write 'scenario.faults.0.target_index=range(0,8)'
run bad_sector scenario=bad_sector 'scenario.faults.0.target_index=range(0,40,4)'
run slow_disk scenario=slow_disk 'scenario.faults.0.target_index=range(0,31,4)'
run flapping_io scenario=flapping_io 'scenario.faults.0.target_index=range(0,31,4)'
run bad_day scenario=bad_day 'scenario.faults.2.target_index=15,25,30,35' "runtime.start_unix_ms=$t0,$((t0 + 1))"
run periodic_io scenario=periodic_io 'scenario.faults.0.target_index=range(0,31,5)'
run mass_loss scenario=mass_loss 'scenario.faults.0.target_index=0,4,8,16,20,24,28,32'
run flaky_loss scenario=flaky_loss 'scenario.faults.1.target_index=0,5,10'
python docs/policy-study/precise_table.py "$out" docs/policy-study
