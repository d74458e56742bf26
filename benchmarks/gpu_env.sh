# Environment for the device machine after benchmarks/gpu_setup.sh (source it).
export PYTHONPATH=/root/reattn/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export REATTN_LLM_GGUF=/root/reattn/smol.gguf REATTN_LLM_CACHE=/root/reattn/cache PYTHONUNBUFFERED=1
