#!/usr/bin/env bash
# benchmarks/gpu_ablation.py for longer than one device command (10 minutes): `start` copies the repository and
# BCCD to a folder outside the repo copy (which each command re-sends) and outside $OUT (emptied per command),
# starts the driver in its own session so it outlives the command, and waits; `wait` (a later command on the
# still-warm machine) waits again; `stop` sends the driver SIGTERM (it stops the runs and writes its bundle).
# Each returns after SECONDS or when the driver has exited, with the bundle, the JSON and the logs in $OUT.
#
#   bash benchmarks/gpu_ablation_on_device.sh start 540 --seeds 0 1 --concurrency 8 --deadline-s 730
#   bash benchmarks/gpu_ablation_on_device.sh wait 240
#
# carry: [".whl", ".data"] (the wheels the device image lacks, and a copy of ../shared/data/bccd: docs/gpu_check.md)
set -u
mode=$1
seconds=$2
shift 2
W=${GPU_ABLATION_DIR:-/root/gpu_ablation}
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1

if [ "$mode" = start ]; then
    [ -n "${SKIP_WHEELS:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    rm -rf "$W" && mkdir -p "$W" && cp -r . "$W/repo" || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'
    (cd "$W/repo" && setsid nohup python3 -m benchmarks.gpu_ablation --device "${DEVICE:-cuda}" --data "$W/repo/.data/bccd" \
        --out "$W/out" "$@" >"$W/driver.out" 2>&1 </dev/null & echo $! >"$W/pid")
elif [ "$mode" = stop ]; then
    kill -TERM "$(cat "$W/pid")"
fi

progress() {   # each run's last validation: epoch, val mAP, and the GPU's load
    python3 - "$W/out/gpu_ablation/runs" <<'EOF'
import json, pathlib, sys
for run in sorted(pathlib.Path(sys.argv[1]).glob("*")):
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()] \
        if (run / "metrics.jsonl").exists() else []
    val = [x for x in lines if "val/mAP50" in x]
    last = val[-1] if val else {}
    print(f"  {run.name}: epoch {last.get('epoch', '-')}, val mAP {last.get('val/mAP50', float('nan')):.3f}")
EOF
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
}

start=$SECONDS
next=60
while kill -0 "$(cat "$W/pid")" 2>/dev/null && [ $((SECONDS - start)) -lt "$seconds" ]; do
    sleep 5
    if [ $((SECONDS - start)) -ge $next ]; then
        echo "--- $((SECONDS - start)) s"; progress; next=$((next + 60))
    fi
done
echo "--- after $((SECONDS - start)) s: the driver is $(kill -0 "$(cat "$W/pid")" 2>/dev/null && echo running || echo done)"
progress
tail -n 30 "$W/driver.out"
cp "$W/driver.out" "$W"/out/gpu_ablation.json "$W"/out/gpu_ablation.log "$W"/out/*.tar.gz "$OUT"/ 2>/dev/null
exit 0
