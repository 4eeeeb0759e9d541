#!/usr/bin/env bash
# Every GPU check of issue 21 in one run, for a machine with a GPU and little time on it.
#
#   bash bench/gpu_checks.sh            (results under $OUT, default /tmp/shardfuzz-gpu)
#
# The machine's own python3 and torch (a CUDA build) are used; a folder .whl/ beside this repo's
# root may hold wheels to install first (shardfuzz itself, and what that python lacks: cattrs...;
# .whl/hyp/ holds a Hypothesis installed only where the machine's is older than shardfuzz needs).
# Every stage has its own time limit and writes as it goes, so a stage that hangs costs its limit
# and no more, and what ran still comes back. Stages:
#   1. facts: GPU, driver, torch, capabilities;
#   2. a probe of two gloo ranks on CPU (a sandbox once hung there): it sets the world sizes below;
#   3. seconds per case, GPU (NCCL) ranks against CPU (gloo) ranks, the same cases (alone: timings);
#   4. at once: the corpus replayed with its sides moved to the GPU and as recorded (--on-cuda
#      --record, in three shares), `pytest -m gpu`, `selftest --device cuda`, a `run --device cuda` campaign.
# Out: log.txt, bench.json, results.tar.gz (the corpus with its `cuda` blocks, every report and log).
# STAGES (default "gloo bench pytest replay selftest run") picks stages; the replay takes the entries
# with no `cuda` block yet, and any under .whl/extra/ (say, a finding of an earlier GPU run to check).
# BUDGET (default 150) is the campaign's seconds; LIMIT (default 230) each parallel stage's.
set -u
STAGES=${STAGES:-gloo bench pytest replay selftest run}
BUDGET=${BUDGET:-150}
LIMIT=${LIMIT:-230}
want() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
OUT=${OUT:-/tmp/shardfuzz-gpu}
mkdir -p "$OUT"
RES=/tmp/shardfuzz-gpu-results
rm -rf "$RES" && mkdir -p "$RES"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
START=$(date +%s)
stage() { echo "=== $(($(date +%s) - START))s: $*"; }
PY=${PYTHON:-python3}

stage "1. facts"
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "cannot install the carried wheels"; exit 1; }
    export PYTHONPATH=/tmp/site
    if ! $PY -c "import hypothesis, sys; sys.exit(tuple(map(int, hypothesis.__version__.split('.')[:2])) < (6, 100))"; then
        $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/hyp/*.whl
    fi
fi
SF="$PY -m shardfuzz"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
$PY - <<'EOF' || exit 1
import attrs, cattrs, hypothesis, torch, shardfuzz, platform
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "nccl", ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else "-",
      "gpus", torch.cuda.device_count(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
      "hypothesis", hypothesis.__version__, "attrs", attrs.__version__, "shardfuzz from", shardfuzz.__file__)
EOF
$SF capabilities | tee "$RES/capabilities.txt"

stage "2. two gloo ranks on CPU"
GLOO=0
want gloo && { timeout 45 $PY bench/probe_gloo.py; GLOO=$?; }
if [ "$GLOO" -eq 0 ]; then WS=2; MAXWS=4; else WS=1; MAXWS=1; echo "two gloo ranks failed (exit $GLOO): world size 1 only"; fi
echo "gloo probe exit $GLOO: campaigns at world size $WS, replays up to $MAXWS ranks" | tee "$RES/gloo.txt"

stage "3. seconds per case, GPU vs CPU ranks"
want bench && { timeout 100 $PY bench/bench_device.py --cases 15 --json "$OUT/bench.json" || echo "bench exit $?"; }

stage "4. replay on cuda, pytest -m gpu, selftest, campaign (in parallel)"
cp -r corpus "$RES/campaign-corpus"
$PY -c "import glob, json; print('\n'.join(p for p in sorted(glob.glob('corpus/*.json')) if 'cuda' not in json.load(open(p))))" \
    > "$RES/unchecked"
ls .whl/extra/*.json >> "$RES/unchecked" 2>/dev/null
awk '{print > "'"$RES"'/share" (NR % 4)}' "$RES/unchecked"
PIDS=""
for i in 0 1 2 3; do
    want replay && [ -s "$RES/share$i" ] || continue
    (timeout "$LIMIT" $SF replay --device cuda --on-cuda --record --max-world-size "$MAXWS" --case-timeout 20 \
        --report "$RES/replay$i.json" $(cat "$RES/share$i") > "$RES/replay$i.txt" 2>&1; echo "replay$i exit $?" >> "$RES/replay$i.txt") &
    PIDS="$PIDS $!"
done
want pytest && (timeout "$LIMIT" $PY -m pytest -m gpu tests/test_device.py -p no:cacheprovider -q > "$RES/pytest-gpu.txt" 2>&1
 echo "pytest exit $?" >> "$RES/pytest-gpu.txt") &
PIDS="$PIDS $!"
want selftest && (timeout "$LIMIT" $SF selftest --device cuda --world-size "$WS" --budget 5 --shrink-budget 3 \
    --report "$RES/selftest.json" > "$RES/selftest.txt" 2>&1; echo "selftest exit $?" >> "$RES/selftest.txt") &
PIDS="$PIDS $!"
want run && (timeout "$LIMIT" $SF run --device cuda --world-size "$WS" --budget "$BUDGET" --database none --corpus "$RES/campaign-corpus" \
    --report "$RES/run.json" --plain --exit-zero > "$RES/run.txt" 2>&1; echo "run exit $?" >> "$RES/run.txt") &
PIDS="$PIDS $!"
wait $PIDS  # not a bare wait: that would wait for the tee of the log too
stage "done; packing"
for f in "$RES"/replay?.txt "$RES"/pytest-gpu.txt "$RES"/selftest.txt; do echo "--- $f"; tail -n 40 "$f"; done
tail -n 25 "$RES/run.txt"
cp -r corpus "$RES/corpus-recorded"
tar -czf "$OUT/results.tar.gz" -C "$RES" .
stage "end"
