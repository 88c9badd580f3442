# Sourced by the GPU session scripts (bench/gpu_session.sh, bench/gpu_compiled.sh, bench/gpu_quality.sh) after they
# set `log`: the environment of a bare device machine, the checkout's packages importable without an install, a
# `stamp` helper that logs a timed heading, and the device and versions at the top of the log.
export PYTHONUNBUFFERED=1 TRITON_CACHE_AUTOTUNING=1
unset TRITON_INTERPRET
if ! python -c "import photon_kernels, photon_hf" 2>/dev/null; then  # run from the tree, no install
    shim=$(mktemp -d)
    ln -s "$PWD/kernels" "$shim/photon_kernels"
    ln -s "$PWD/src/photon_hf" "$shim/photon_hf"
    export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
fi
stamp() { echo "=== [$(date +%T)] $*" | tee -a "$log"; }

stamp "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$log"
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__,
'transformers', transformers.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$log"
