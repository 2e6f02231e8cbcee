#!/usr/bin/env bash
# The full-size path on one GPU, unattended, in at most about 8 minutes; JSON results under OUT_DIR:
#   <variant>.json  full-size training steps (benchmarks/gpu_check.py): bf16 + sdpa, gradient checkpointing,
#                   nf4 and int8 trunks, torch.compile; mean step time and peak torch.cuda.max_memory_allocated
#   app/            one short epoch of the real training app at full size on the demo cohort (metrics.json,
#                   step_times.jsonl, the run's log)
#   summary.json    all of it in one file, with the exit status of every part
# Weights are random (no model hub). Which Python runs it:
#   - the checkout's .venv (make install) when there is one;
#   - else $PYTHON (default python3) with the checkout's src/ on PYTHONPATH: an offline GPU server whose Python
#     already has PyTorch and most of the stack. What it lacks (tools/wheelhouse.py missing) is installed from
#     the wheel folder $WHEELHOUSE (default ./wheelhouse, made on a connected machine by `make wheelhouse`) into
#     OUT_DIR/site with `pip install --no-index`: nothing is downloaded, nothing outside OUT_DIR is changed.
#   benchmarks/gpu_check.sh /tmp/gpu_check
#   WHEELHOUSE=/media/usb/wheelhouse PYTHON=python3 benchmarks/gpu_check.sh /tmp/gpu_check
#   GPU_CHECK_TINY=1 benchmarks/gpu_check.sh /tmp/dry_run      # the same steps with tiny models on the CPU
set -uo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then
    py=.venv/bin/python
else
    py=${PYTHON:-python3}
    wheelhouse=${WHEELHOUSE:-wheelhouse}
    if ! lacking=$("$py" tools/wheelhouse.py missing); then
        if [ ! -d "$wheelhouse" ]; then
            echo "error: $py lacks what the suite needs:"; echo "$lacking" | sed 's/^/  /'
            echo "On a machine with a package index: make wheelhouse HAVE=have.txt WHEEL_PYTHON=<this Python's" \
                 "major.minor> (have.txt = \`$py -m pip freeze\` here), copy wheelhouse/ next to this script's" \
                 "checkout and run again (or set WHEELHOUSE=/path); or run make install where an index is reachable."
            exit 2
        fi
        echo "== installing what $py lacks from $wheelhouse into $out/site"
        "$py" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$out/site" "$wheelhouse"/*.whl \
            || { echo "error: installing from $wheelhouse failed"; exit 2; }
        export PYTHONPATH="$out/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    if ! lacking=$("$py" tools/wheelhouse.py missing); then
        echo "error: still missing after the wheelhouse:"; echo "$lacking" | sed 's/^/  /'; exit 2
    fi
fi
export HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1
tiny=${GPU_CHECK_TINY:-0}
if [ "$tiny" = 1 ]; then
    step_args=(--tiny --device cpu --batch-size 4 --steps 2 --warmup 1)
    app_args=(trainer=cpu trainer.max_epochs=1 +trainer.limit_train_batches=2)
    variants=bf16,grad_ckpt,nf4,int8; compile_variant=compile
else
    step_args=(--batch-size 16 --steps 10 --warmup 3)
    app_args=(size=full encoder.pretrained=false llm.pretrained=false trainer.max_epochs=1
              +trainer.limit_train_batches=5)
    variants=bf16,grad_ckpt,nf4,int8; compile_variant=compile
fi
status_steps=0; status_compile=0; status_app=0
echo "== training steps ($variants)"; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
timeout "${STEPS_TIMEOUT:-240}" "$py" benchmarks/gpu_check.py --out "$out" --variants "$variants" "${step_args[@]}" \
    2>&1 | tee "$out/steps.log" || status_steps=$?
echo "== torch.compile"
timeout "${COMPILE_TIMEOUT:-120}" "$py" benchmarks/gpu_check.py --out "$out" --variants "$compile_variant" \
    "${step_args[@]}" 2>&1 | tee "$out/compile.log" || status_compile=$?
echo "== one epoch of the training app at full size on the demo cohort"
app="$out/app"
timeout "${APP_TIMEOUT:-120}" "$py" -m pneumollm.cli.train "${app_args[@]}" logger=csv callbacks.progress=null \
    data.progress=false "paths.root_dir=$app" "hydra.run.dir=$app/run" \
    "+callbacks.step_timer={_target_: pneumollm.training.callbacks.StepTimer, path: $app/run/step_times.jsonl}" \
    >"$app.log" 2>&1 || status_app=$?
"$py" - "$out" "$status_steps" "$status_compile" "$status_app" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {"status": {"steps": int(sys.argv[2]), "compile": int(sys.argv[3]), "app": int(sys.argv[4])}}
for variant in ("bf16", "grad_ckpt", "compile", "nf4", "int8"):
    path = out / f"{variant}.json"
    summary[variant] = json.loads(path.read_text()) if path.is_file() else {"status": "not run (time limit?)"}
metrics = out / "app" / "run" / "metrics.json"
steps = out / "app" / "run" / "step_times.jsonl"
summary["app"] = json.loads(metrics.read_text()) if metrics.is_file() else {"status": "no metrics.json"}
if steps.is_file():
    summary["app"]["step_seconds"] = [json.loads(l)["seconds"] for l in steps.read_text().splitlines()]
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
for name, part in summary.items():
    if name == "status":
        continue
    line = part.get("mean_step_seconds") or part.get("train_seconds") or part.get("status") or part.get("error")
    print(f"{name}: {line}")
print(f"written: {out / 'summary.json'}")
PY
exit $(( status_steps || status_compile || status_app ))
