#!/usr/bin/env bash
# The GPU test suite (tests/gpu) spread over the visible GPUs, one lane per GPU, so it takes
# about as long as its slowest lane instead of the sum (on 4x H200: 4.2 minutes for the quant
# lane, 4.9 for dense-act, 2.3 for the rest, 1 for the multi-GPU tests). The multi-GPU tests
# run on GPUs 2 and 3 once the lane on GPU 2 is done. Two or three GPUs: two lanes (quant and the
# rest on GPU 0, dense-act on GPU 1), then the multi-GPU tests on GPUs 0 and 1. One GPU: one lane.
# From the repository root:
#   PYTHONPATH=src bash benchmarks/gpu_tests.sh        # logs in ${OUT:-gpu-tests}/<lane>.log
set -u
out=${OUT:-gpu-tests}
mkdir -p "$out"
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
run() {  # run LANE GPUS FILE...: pytest on those GPUs, its summary line on stdout
  local lane=$1 devices=$2
  shift 2
  CUDA_VISIBLE_DEVICES=$devices python3 -m pytest -q -p no:cacheprovider "$@" > "$out/$lane.log" 2>&1
  echo "$lane (GPUs $devices): $(tail -n 1 "$out/$lane.log")"
}
if [ "$gpus" -lt 2 ]; then
  run all 0 tests/gpu
  exit
fi
first=(tests/gpu/test_quant_kernels.py)
second=(tests/gpu/test_dense_kernels.py tests/gpu/test_act_gemm_kernels.py)
multi=(tests/gpu/test_fast_all_reduce.py)
rest=()  # every other test file, so a new one is never left out
for f in tests/gpu/test_*.py; do
  case " ${first[*]} ${second[*]} ${multi[*]} " in *" $f "*) ;; *) rest+=("$f") ;; esac
done
if [ "$gpus" -lt 4 ]; then
  run quant-rest 0 "${first[@]}" "${rest[@]}" &
  run dense-act 1 "${second[@]}" &
  wait
  run multi-gpu 0,1 "${multi[@]}"
  exit
fi
run quant 0 "${first[@]}" &
run dense-act 1 "${second[@]}" &
(run rest 2 "${rest[@]}"; run multi-gpu 2,3 "${multi[@]}") &
wait
