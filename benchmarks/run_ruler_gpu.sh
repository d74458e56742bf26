#!/usr/bin/env bash
# RULER on the device machine, after benchmarks/gpu_setup.sh (stage 1 and 2; for the phase gemma, its
# five gemma stages instead) on the same warm machine.
#   bash benchmarks/run_ruler_gpu.sh <phase> <data dir> <out dir>
# Each phase runs its modes side by side (ruler.py run --workers: processes sharing the GPU, since a
# 135M model's long-context run is bound by kernel launches) and writes predictions as it goes.
set -uo pipefail
phase=${1:?phase}; data=${2:?data dir}; out=${3:?out dir}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/gpu_env.sh"
mkdir -p "$out"
R="python3 $here/ruler.py run --data $data"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
t0=$(date +%s)
case "$phase" in
  screen)  # decode_spans candidates on the same prompts, then the stock baselines in the window
    for ds in own question both; do
      $R --modes reattention --lengths 32768 --tasks niah_single_2,qa_1,niah_single_3 --set decode_spans=$ds \
         --label re-$ds --workers 4 --out "$out/screen.jsonl" > "$out/screen_$ds.log" 2>&1 &
    done
    wait
    $R --modes stock --lengths 4096,8192 --workers 8 --out "$out/stock.jsonl" > "$out/stock.log" 2>&1
    ;;
  final)  # the defaults where the targets apply first (niah_single_2 at 128K), then the six tasks at 32K, then the rest
    main=niah_single_2,niah_single_3,niah_multikey_1,niah_multivalue,niah_multiquery,qa_1
    rest=niah_single_1,niah_multikey_2,niah_multikey_3,vt,cwe,fwe,qa_2
    $R --modes reattention,streaming --lengths 131072 --tasks niah_single_2 --workers 5 --out "$out/final.jsonl" > "$out/final_128.log" 2>&1 &
    $R --modes reattention --lengths 32768 --tasks niah_multikey_1,niah_multivalue,niah_multiquery --workers 4 --out "$out/final.jsonl" > "$out/final_32re.log" 2>&1 &
    $R --modes streaming --lengths 32768 --tasks $main --workers 3 --out "$out/final.jsonl" > "$out/final_32st.log" 2>&1 &
    $R --modes reattention,streaming --lengths 32768 --tasks $rest --workers 3 --out "$out/final.jsonl" > "$out/final_32rest.log" 2>&1 &
    wait
    ;;
  spans128)  # decode_spans and top_k candidates where the defaults fall short (niah_single_2 at 128K)
    # VARIANTS="label:k=v,k=v label2:..." overrides the list (commas: several settings)
    for v in ${VARIANTS:-question:decode_spans=question both:decode_spans=both own-k8:top_k=8 both-k8:decode_spans=both,top_k=8}; do
      $R --modes reattention --lengths 131072 --tasks niah_single_2 --set ${v#*:} --label re-${v%%:*} \
         --workers ${WORKERS:-4} --out "$out/spans128.jsonl" > "$out/spans128_${v%%:*}.log" 2>&1 &
    done
    wait
    ;;
  final32)  # the defaults: ReAttention and streaming at 32K on every task generated
    $R --modes reattention --lengths 32768 --workers 8 --out "$out/final32.jsonl" > "$out/final32_re.log" 2>&1 &
    $R --modes streaming --lengths 32768 --workers 4 --out "$out/final32.jsonl" > "$out/final32_st.log" 2>&1 &
    wait
    ;;
  final128)
    $R --modes reattention --lengths 131072 --workers 8 --out "$out/final128.jsonl" > "$out/final128_re.log" 2>&1 &
    $R --modes streaming --lengths 131072 --workers 4 --out "$out/final128.jsonl" > "$out/final128_st.log" 2>&1 &
    wait
    ;;
  graphs)  # decode from CUDA graphs (cuda_graphs=True) on the prompts of Runs 8 and 9: answers as with eager steps?
    T="timeout ${LIMIT_S:-540}"
    $T $R --modes reattention --lengths 32768,131072 --tasks niah_single_2,niah_multikey_1,qa_1 --set cuda_graphs=True \
       --label re-graphs --workers 6 --out "$out/graphs.jsonl" > "$out/graphs.log" 2>&1 &
    wait
    ;;
  baselines)  # stock at 8K on every task, qa_2 in every mode (stock 4K/8K, ReAttention and streaming 32K)
    T="timeout ${LIMIT_S:-540}"
    $T $R --modes stock --lengths 8192 --workers 6 --out "$out/stock8k.jsonl" > "$out/stock8k.log" 2>&1 &
    $T $R --modes stock --lengths 4096 --tasks qa_2 --workers 2 --out "$out/qa2.jsonl" > "$out/qa2_stock.log" 2>&1 &
    $T $R --modes reattention,streaming --lengths 32768 --tasks qa_2 --workers 4 --out "$out/qa2.jsonl" > "$out/qa2_32.log" 2>&1 &
    wait
    ;;
  million)  # five 1M samples do not finish side by side within one command: INDICES picks some (e.g. 0,1 then 2,3 then 4)
    idx=${INDICES:-0,1,2,3,4}; n=$(( $(tr -cd , <<<"$idx" | wc -c) + 1 ))
    T="timeout ${LIMIT_S:-540}"
    # SET="span_shift=8" runs a candidate setting (labelled re-<SET>) instead of the defaults; NO_STREAMING=1 skips streaming;
    # TRACE=1 traces ReAttention (the needle's rows in scope per layer, question forward and each decode step):
    # one traced 1M sample fits a command, three side by side did not (Run 6)
    if [ -n "${SET:-}" ]; then sel=(--set "$SET" --label "re-$SET"); else sel=(); fi
    if [ -n "${TRACE:-}" ]; then sel+=(--trace); fi
    $T $R --modes reattention --lengths 1048576 --indices "$idx" --workers "$n" "${sel[@]}" --out "$out/million.jsonl" > "$out/million.log" 2>&1 &
    [ -n "${NO_STREAMING:-}" ] || $T $R --modes streaming --lengths 1048576 --indices "$idx" --workers 1 --out "$out/million_st.jsonl" > "$out/million_st.log" 2>&1 &
    wait
    ;;
  screen1m)  # question-side candidates at 1M: each sample prefilled once with the defaults, then answered again
    # for every variant from the kept document K/V (ruler.py --variant: seconds each, not minutes).
    # INDICES picks samples (two side by side fit a command);
    # SCREEN32=1 screens the same variants on niah_single_2 and qa_1 at 32K (10 samples) beside them.
    idx=${INDICES:-0,4}; n=$(( $(tr -cd , <<<"$idx" | wc -c) + 1 ))
    T="timeout ${LIMIT_S:-540}"
    var=(); for v in ${VARIANTS:-union:decode_extra_until=None question:decode_spans=question k8:prompt_top_k=8 raw:scoring=raw}; do var+=(--variant "$v"); done
    $T $R --modes reattention --lengths 1048576 --indices "$idx" --workers "$n" "${var[@]}" --out "$out/screen1m.jsonl" > "$out/screen1m.log" 2>&1 &
    [ -z "${SCREEN32:-}" ] || $T $R --modes reattention --lengths 32768 --tasks niah_single_2,qa_1 --limit 10 --workers 4 "${var[@]}" --out "$out/screen32.jsonl" > "$out/screen32.log" 2>&1 &
    wait
    ;;
  targets)  # the target task on the tree as it stands: niah_single_2, ReAttention, 32K (20 samples) and 128K (10)
    T="timeout ${LIMIT_S:-540}"
    $T $R --modes reattention --lengths 32768 --tasks niah_single_2 --workers 4 --out "$out/targets.jsonl" > "$out/targets_32k.log" 2>&1 &
    $T $R --modes reattention --lengths 131072 --tasks niah_single_2 --workers 5 --out "$out/targets.jsonl" > "$out/targets_128k.log" 2>&1 &
    wait
    ;;
  two_level)  # two-level selection against exact on the target prompts (niah_single_2, 32K: 20, 128K: 10).
    # Exact (the default) and two-level with the default budget run side by side; each two-level sample is
    # answered again from the same two-level document K/V (--variant) with the answer forwards two-level too
    # (exact_answer=none), with 512 candidate blocks for them, and with the question alone exact
    # (exact_answer=question, keys_values' default; added after Run 15); at 128K a document prefilled with 512
    # candidate blocks (12.6% of its blocks, the default's share at 32K being 12.5%) as well.
    T="timeout ${LIMIT_S:-540}"
    two=(--set selection=two_level --label re-two-level --variant re-two-all:exact_answer=none
         --variant re-two-all-c512:exact_answer=none,candidate_blocks=512 --variant re-two-question:exact_answer=question)
    $T $R --modes reattention --lengths 32768 --tasks niah_single_2 --workers 2 --out "$out/two_level.jsonl" > "$out/exact_32k.log" 2>&1 &
    $T $R --modes reattention --lengths 32768 --tasks niah_single_2 "${two[@]}" --workers 3 --out "$out/two_level.jsonl" > "$out/two_32k.log" 2>&1 &
    $T $R --modes reattention --lengths 131072 --tasks niah_single_2 --workers 4 --out "$out/two_level.jsonl" > "$out/exact_128k.log" 2>&1 &
    $T $R --modes reattention --lengths 131072 --tasks niah_single_2 "${two[@]}" --workers 4 --out "$out/two_level.jsonl" > "$out/two_128k.log" 2>&1 &
    $T $R --modes reattention --lengths 131072 --tasks niah_single_2 --set selection=two_level,candidate_blocks=512 \
       --label re-two-c512 --variant re-two-c512-all:exact_answer=none --workers 2 --out "$out/two_level.jsonl" > "$out/two512_128k.log" 2>&1 &
    wait
    ;;
  budget)  # two-level selection with half the default model's candidate blocks (62 of 124) and level 1 from every
    # STRIDE-th query of a document chunk (level1_stride, default 8) against exact selection, and two-level with the
    # default budget at that stride: niah_single_2 and niah_multikey_1 at 32K (20 each), niah_single_2 at 128K (10)
    T="timeout ${LIMIT_S:-300}"; s=${STRIDE:-8}
    half=(--set selection=two_level,candidate_blocks=${HALF:-62},level1_stride=$s --label re-two-half-s$s)
    $T $R --modes reattention --lengths 32768 --tasks niah_single_2,niah_multikey_1 --workers 4 --out "$out/budget.jsonl" > "$out/budget_exact32.log" 2>&1 &
    $T $R --modes reattention --lengths 131072 --tasks niah_single_2 --workers 4 --out "$out/budget.jsonl" > "$out/budget_exact128.log" 2>&1 &
    $T $R --modes reattention --lengths 32768 --tasks niah_single_2,niah_multikey_1 "${half[@]}" --workers 3 --out "$out/budget.jsonl" > "$out/budget_half32.log" 2>&1 &
    $T $R --modes reattention --lengths 131072 --tasks niah_single_2 "${half[@]}" --workers 3 --out "$out/budget.jsonl" > "$out/budget_half128.log" 2>&1 &
    $T $R --modes reattention --lengths 32768,131072 --tasks niah_single_2 --set selection=two_level,level1_stride=$s --label re-two-s$s \
       --workers 3 --out "$out/budget.jsonl" > "$out/budget_two_s.log" 2>&1 &
    wait
    ;;
  query_stride)  # a document chunk's spans voted by every QS-th query (query_stride, default 2) against every
    # query (exact, the default), exact and two-level: niah_single_2 and niah_multikey_1 at 32K (20 each), 128K (10)
    T="timeout ${LIMIT_S:-300}"; qs=${QS:-2}
    $T $R --modes reattention --lengths 32768 --tasks niah_single_2,niah_multikey_1 --workers 4 --out "$out/qstride.jsonl" > "$out/qs_exact32.log" 2>&1 &
    $T $R --modes reattention --lengths 131072 --tasks niah_single_2 --workers 3 --out "$out/qstride.jsonl" > "$out/qs_exact128.log" 2>&1 &
    $T $R --modes reattention --lengths 32768 --tasks niah_single_2,niah_multikey_1 --set query_stride=$qs --label re-qs$qs \
       --workers 4 --out "$out/qstride.jsonl" > "$out/qs_32.log" 2>&1 &
    $T $R --modes reattention --lengths 131072 --tasks niah_single_2 --set query_stride=$qs --label re-qs$qs --workers 3 \
       --out "$out/qstride.jsonl" > "$out/qs_128.log" 2>&1 &
    $T $R --modes reattention --lengths 32768,131072 --tasks niah_single_2 --set selection=two_level,query_stride=$qs \
       --label re-two-qs$qs --workers 3 --out "$out/qstride.jsonl" > "$out/qs_two.log" 2>&1 &
    wait
    ;;
  remainder)  # session 30: a document's short remainder chunk two-level (its strides too) and joined with the
    # question into one forward (method.chunks.plan_forwards), the answer's chunk alone exact; two-level with the
    # default budget beside exact selection: niah_single_2 at 32K (20) and 128K (10), niah_multikey_1 at 32K (20)
    T="timeout ${LIMIT_S:-480}"
    two=(--set selection=two_level --label re-two-level)
    $T $R --modes reattention --lengths 32768 --tasks niah_single_2,niah_multikey_1 --workers 3 --out "$out/remainder.jsonl" > "$out/rem_exact32.log" 2>&1 &
    $T $R --modes reattention --lengths 131072 --tasks niah_single_2 --workers 3 --out "$out/remainder.jsonl" > "$out/rem_exact128.log" 2>&1 &
    $T $R --modes reattention --lengths 32768 --tasks niah_single_2,niah_multikey_1 "${two[@]}" --workers 3 --out "$out/remainder.jsonl" > "$out/rem_two32.log" 2>&1 &
    $T $R --modes reattention --lengths 131072 --tasks niah_single_2 "${two[@]}" --workers 3 --out "$out/remainder.jsonl" > "$out/rem_two128.log" 2>&1 &
    wait
    ;;
  two_level_tasks)  # two-level selection (the default exact answer forwards) against exact and streaming at 32K
    # on three more tasks (niah_multikey_1, niah_multivalue, qa_1: 20 samples each, generated like Run 2's)
    T="timeout ${LIMIT_S:-540}"
    tasks=niah_multikey_1,niah_multivalue,qa_1
    $T $R --modes reattention --lengths 32768 --tasks $tasks --workers 5 --out "$out/tasks.jsonl" > "$out/tasks_exact.log" 2>&1 &
    $T $R --modes reattention --lengths 32768 --tasks $tasks --set selection=two_level --label re-two-level --workers 5 \
       --out "$out/tasks.jsonl" > "$out/tasks_two.log" 2>&1 &
    $T $R --modes streaming --lengths 32768 --tasks $tasks --workers 3 --out "$out/tasks.jsonl" > "$out/tasks_streaming.log" 2>&1 &
    wait
    ;;
  between)  # decode_extra_until between the lengths measured: niah_single_2 at 512K (INDICES_512) with the
    # defaults (question spans only past 262,144 cached tokens) and, from the same kept K/V, union's own
    # spans (--variant); 1M samples (INDICES_1M, optional) the same way beside them.
    T="timeout ${LIMIT_S:-540}"
    v=(--variant union:decode_extra_until=None)
    i5=${INDICES_512:-0,1,2}; n5=$(( $(tr -cd , <<<"$i5" | wc -c) + 1 ))
    $T $R --modes reattention --lengths 524288 --indices "$i5" --workers "$n5" "${v[@]}" --out "$out/between.jsonl" > "$out/between_512k.log" 2>&1 &
    if [ -n "${INDICES_1M:-}" ]; then
      n1=$(( $(tr -cd , <<<"$INDICES_1M" | wc -c) + 1 ))
      $T $R --modes reattention --lengths 1048576 --indices "$INDICES_1M" --workers "$n1" "${v[@]}" --out "$out/between.jsonl" > "$out/between_1m.log" 2>&1 &
    fi
    wait
    ;;
  votes)  # vote_pooling="span" candidates against Run 3's defaults on the same prompts, traced
    # (ruler.py --trace: the value's rows in scope per layer, question forward and each decode step):
    # niah_single_2 at 32K and 128K, qa_1 at 32K. VARIANTS="label:k=v,k=v ..." overrides the list.
    T="timeout ${LIMIT_S:-540}"
    for v in ${VARIANTS:-span:vote_pooling=span span16:vote_pooling=span,span_shift=16}; do
      $T $R --modes reattention --lengths 32768,131072 --tasks niah_single_2 --set ${v#*:} --label re-${v%%:*} \
         --trace --workers 4 --out "$out/votes.jsonl" > "$out/votes_${v%%:*}.log" 2>&1 &
      $T $R --modes reattention --lengths 32768 --tasks qa_1 --set ${v#*:} --label re-${v%%:*} \
         --workers 2 --out "$out/votes.jsonl" > "$out/votes_qa_${v%%:*}.log" 2>&1 &
    done
    wait
    ;;
  gemma)  # Gemma-3-270M (issue 15; after gpu_setup.sh gemma): stock in its 32K window at 8K/16K (and 2K/4K,
    # where it may still read needles), ReAttention and streaming at 64K/128K, ReAttention at 1M;
    # samples from $data/gemma3.
    # PARTS picks groups (default all four, side by side): stock re st million. Each group stops after
    # LIMIT_S seconds (default 540, inside the device's 600 s per command) and keeps what it finished.
    G="timeout ${LIMIT_S:-540} $R --model gemma-3-270m"
    for p in ${PARTS:-stock re st million}; do
      case $p in
        stock) $G --modes stock --lengths 2048,4096,8192,16384 --workers 3 --out "$out/gemma.jsonl" > "$out/gemma_stock.log" 2>&1 & ;;
        re) $G --modes reattention --lengths 65536,131072 --workers 6 --out "$out/gemma.jsonl" > "$out/gemma_re.log" 2>&1 & ;;
        st) $G --modes streaming --lengths 65536,131072 --workers 4 --out "$out/gemma.jsonl" > "$out/gemma_st.log" 2>&1 & ;;
        million) if [ -f "$data/gemma3/niah_single_2_1048576.jsonl.xz" ]; then
            $G --modes reattention --lengths 1048576 --workers 5 --out "$out/gemma.jsonl" > "$out/gemma_1m.log" 2>&1 &
          else echo "no $data/gemma3/niah_single_2_1048576.jsonl.xz: 1M skipped"; fi ;;
        *) echo "unknown part $p"; exit 2 ;;
      esac
    done
    wait
    ;;
  *) echo "unknown phase $phase"; exit 2 ;;
esac
echo "phase $phase: $(( $(date +%s) - t0 )) s"
# all-found counts per label, task and length (RULER's metrics: ruler.py score, on the CPU)
python3 - "$out" <<'PY'
import collections, json, pathlib, sys
hits = collections.Counter(); n = collections.Counter()
for f in pathlib.Path(sys.argv[1]).glob("*.jsonl"):
    for line in f.open():
        r = json.loads(line); k = (r["label"], r["task"], r["length"])
        n[k] += 1; hits[k] += all(o.lower() in r["pred"].lower() for o in r["outputs"])
for k in sorted(n):
    print(*k, f"{hits[k]}/{n[k]}")
PY
