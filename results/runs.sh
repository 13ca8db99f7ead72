#!/usr/bin/env bash
# Every run behind the committed leaderboards (results/leaderboard_*.csv) and reports (results/reports/).
# Each writes a text-free rows file results/runs/<task>/<run_id>.jsonl (dataset splits carry content hashes,
# never the datasets' text; the project's own sets also carry prompts and answers). The leaderboard CSVs are
# then a pure function of those committed files: `python -m harness leaderboard` rebuilds them byte for byte.
#
#   bash results/runs.sh            # needs the datasets prepared (README: `python -m harness data prepare ...`)
#
# Generations and judgments are cached in the store ($FTBENCH_CACHE/store.sqlite): a rerun only recomputes rows.
# On 2 CPU cores an empty cache takes about 40 minutes; a warm one about 3.
# --engine transformers: the committed rows were written in process by transformers (float32, the GGUF
# de-quantized), before `run` could use llama.cpp; llama.cpp's greedy texts differ where the next token is nearly
# tied, so a rebuild names the engine that wrote them.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=smollm2-135m-instruct
JUDGE=transformers:smollm2-135m-instruct   # the offline judge (the embedded model); ollama:llama3 where Ollama runs
run() { python -m harness run --engine transformers --model "$BASE" "$@"; }

# chat: the base and the alpaca adapter; ROUGE-L on both sets, the offline judge on the own set (its pointwise
# scores are checked against the committed human labels in results/reports/judges/)
for adapter in "" smollm2-135m-alpaca; do
  run ${adapter:+--adapter "$adapter"} --eval-set instructions_own --judge "$JUDGE"
  run ${adapter:+--adapter "$adapter"} --eval-set instruction:test --judge none
done
# chat, pairwise: the alpaca adapter against the base's answers, both orders (the log-prob judge; its agreement
# with the committed human labels is in results/reports/judges/)
run --adapter smollm2-135m-alpaca --eval-set instructions_own --judge "$JUDGE" --judge-mode pairwise \
  --baseline instructions_own__smollm2-135m-instruct__base__transformers-smollm2-135m-instruct
# poem, on both bases (SmolLM2-135M and Gemma-3-270M), each base and its Tang-poem adapter on both poem sets:
# free decoding, the form constraint, the form + the 平水韵 rhyme on the even lines (rhyme) and the 平仄 template
# too (rhyme+tone); the rhyme and tone checks of the free and form rows are the rates without those constraints
poem() {   # poem MODEL ADAPTER [run flags...]
  local model=$1 tuned=$2; shift 2
  for adapter in "" "$tuned"; do
    for es in poems_own poems_zh:test_jueju; do
      for decoding in free form rhyme rhyme+tone; do
        python -m harness run --engine transformers --model "$model" ${adapter:+--adapter "$adapter"} --eval-set "$es" \
          --decoding "$decoding" --judge none "$@"
      done
    done
  done
}
poem "$BASE" smollm2-135m-poem-zh
poem gemma3-270m gemma3-270m-poem-zh --max-new-tokens 120
# spam: the base zero-shot (label likelihoods), the classification-head adapter and the label-as-text adapter
for adapter in "" smollm2-135m-spam smollm2-135m-spam-label-text; do
  for es in sms_own sms_spam:test sms_spam:natural_test; do
    run ${adapter:+--adapter "$adapter"} --eval-set "$es" --judge none
  done
done
# spam and chat on the second base (Gemma-3-270M): its base zero-shot / with the Alpaca prompt, and its adapters
for es in sms_own sms_spam:test sms_spam:natural_test; do
  python -m harness run --engine transformers --model gemma3-270m --adapter gemma3-270m-spam --eval-set "$es" --judge none
done
for es in sms_own sms_spam:test sms_spam:natural_test; do
  python -m harness run --engine transformers --model gemma3-270m --eval-set "$es" --judge none
done
# (ROUGE-L only: the offline judge agrees with the human labels no better than chance, results/reports/judges/)
for adapter in "" gemma3-270m-alpaca; do
  python -m harness run --engine transformers --model gemma3-270m ${adapter:+--adapter "$adapter"} --eval-set instructions_own --judge none
done
python -m harness leaderboard
# cross-base reports, SmolLM2-135M vs Gemma-3-270M: base vs base and adapter vs adapter, paired on the shared items
cross() { python -m harness report --models "$1" "$2" --eval-set "$3" --judge none ${4:+--decoding "$4"}; }
cross "$BASE" gemma3-270m poems_zh:test_jueju free
for decoding in free form rhyme; do
  cross "$BASE+smollm2-135m-poem-zh" gemma3-270m+gemma3-270m-poem-zh poems_zh:test_jueju "$decoding"
done
cross "$BASE" gemma3-270m sms_spam:test
cross "$BASE" gemma3-270m sms_spam:natural_test
cross "$BASE+smollm2-135m-spam" gemma3-270m+gemma3-270m-spam sms_spam:test
R=results/runs/chat/instructions_own   # chat: the SmolLM2 runs carry the offline judge's scores, Gemma's do not (ROUGE-L)
python -m harness report --models "${R}__${BASE}__base__transformers-${BASE}.jsonl" "${R}__gemma3-270m__base__nojudge.jsonl"
python -m harness report --models "${R}__${BASE}__smollm2-135m-alpaca__transformers-${BASE}.jsonl" \
  "${R}__gemma3-270m__gemma3-270m-alpaca__nojudge.jsonl"
