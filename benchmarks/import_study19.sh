#!/usr/bin/env bash
# Brings one machine's study records (benchmarks/gpu_study19.sh) into results/gpu/h200/study19/, stamped by
# benchmarks/import_records.py: each grid's records into study19/<grid>/ with their cells' done / failed markers;
# the sample grid of every seed-0 cell but the lr sweeps' (the report's sample sheet: one per configuration); the
# tokenizers' records into study19/tokenizers.jsonl (training) and tokenize.jsonl (token caches). Tokenizers trained
# on the machine (tokenizer_<name>.safetensors) are left to commit by hand, with their line in SHA256SUMS.
# A machine's records accumulate over its calls: import the LAST call of each machine, once (an earlier call's
# records are in it too; importing two calls of one machine would count their cells twice).
#   bash benchmarks/import_study19.sh FILES_AT "BESIDE"    (after `bash benchmarks/gpu_tree.sh back`)
set -euo pipefail
SRC=${1:?the last call of the machine: its files_at folder}; BESIDE=${2:?what ran beside the cells, for the records}
D=results/gpu/h200/study19; T=$(mktemp -d)
cat "$SRC"/records.tgz.part* | tar xz -C "$T"
[ -f "$SRC/logs.tar.gz" ] && tar xzf "$SRC/logs.tar.gz" -C "$T"
into() {  # DEST SRC...: append (create when new), stamped with the machine and what ran beside
  local dest=$1; shift
  python benchmarks/import_records.py "$dest" "$@" --machine nvidia-h200 --beside "$BESIDE" \
    $([ -e "$dest" ] && echo --append)
}
for g in "$T"/results/*/; do
  n=$(basename "$g")
  case $n in
    tok_*)
      [ -f "$g/train_tokenizer.jsonl" ] && into $D/tokenizers.jsonl "$g/train_tokenizer.jsonl"
      [ -f "$g/tokenize.jsonl" ] && into $D/tokenize.jsonl "$g/tokenize.jsonl" ;;
    *)  # (a folder of carried stubs alone, such as an earlier study's, has no records: nothing to import)
      compgen -G "$g/*.jsonl" > /dev/null || continue
      for f in "$g"/*.jsonl; do into "$D/$n/$(basename "$f")" "$f"; done
      mkdir -p "$D/$n/cells" && cp -rn "$g/cells/." "$D/$n/cells/"
      find "$D/$n/cells" -name .varbench.lock -delete  # (a cell's lock file, left where a cell ran or was cut)
      for failed in "$D/$n"/cells/*/failed.json; do  # an earlier attempt's marker, as the grid drops it on success
        if [ -f "$(dirname "$failed")/done.json" ]; then rm "$failed"; fi
      done
      for done in "$g"/cells/*/done.json; do  # seed 0's sample grid, where the report's sheet looks for it
        [[ $n != lr* ]] && [ -f "$done" ] && grep -q '"seed=0"' "$done" || continue  # (the sweeps' are not arms)
        png=$(cd "$g" && ls runs/cells/*/"$(basename "$(dirname "$done")")"/samples*.png 2>/dev/null) || continue
        mkdir -p "$D/$n/$(dirname "$png")" && cp "$g/$png" "$D/$n/$png"
      done ;;
  esac
done
echo "imported from $SRC (logs in $T/logs: keep the driver log's excerpt beside the records)"
