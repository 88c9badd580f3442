# The one set-up of the GPU scripts in this folder (session.sh, compiled.sh, lease.sh, quality.sh, kernel_checks.sh,
# serving.sh), sourced after they set `out` and `log`: the environment of a bare device machine, the checkout's
# packages importable without an install, a `stamp` helper that logs a timed heading, `gpu_model_tests`, and the
# device and versions at the top of the log.
# TRITON_CACHE_AUTOTUNING: Triton versions that know it reuse the tests' autotuning in the benchmarks.
export PYTHONUNBUFFERED=1 TRITON_CACHE_AUTOTUNING=1
unset TRITON_INTERPRET
# Run from the tree, no install (`python -m bench...` finds bench/ itself, from the repository root).
if ! python -c "import photon_kernels, photon_hf" 2>/dev/null; then
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
stamp() { echo "=== [$(date +%T)] $*" | tee -a "$log"; }
# gpu_model_tests SECONDS: the gpu-marked model tests (exactness on CUDA, no host sync per step, compiled == eager),
# their output in $out/gpu_model_tests.txt and their summary in the log.
gpu_model_tests() {
    stamp "gpu model tests (exactness on CUDA, no host sync per step, compiled == eager)"
    timeout "$1" python -m pytest -m gpu tests/test_gpu_model.py -q -rA -p no:cacheprovider --durations=6 \
        >"$out/gpu_model_tests.txt" 2>&1
    stamp "gpu model tests exit $?"
    tail -n 12 "$out/gpu_model_tests.txt" | tee -a "$log"
}

stamp "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$log"
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__,
'transformers', transformers.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$log"
