#!/usr/bin/env bash
# Side by side, in one run: antispam against SpamAssassin, Rspamd and bogofilter on the TEST split.
#
#   benchmarks/peers.sh [--ours-only]
#
# Uses the peers' own scripts in ../shared/peers (they install the engines from Debian, start them on
# loopback, train them on TRAIN and scan TEST: about 15 minutes on 2 cores), then scans the same TEST
# directory with antispam (2 worker processes, like the peers' concurrency of 2) and prints one table
# from the peers' eval.py. --ours-only reuses the SpamAssassin and Rspamd TSVs already in $OUT from an
# earlier full run (minutes each; their speed is two orders of magnitude below ours), but reruns bogofilter
# (under a second, trained wordlist from that run) right before ours, so the two fastest engines are
# timed at the same moment on the same machine state.
# Output: $OUT (default /tmp/peers-out)/summary_with_antispam.md
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEERS="${PEERS:-$HERE/../../shared/peers}"
export OUT="${OUT:-/tmp/peers-out}"
mkdir -p "$OUT"
if [ "${1:-}" != "--ours-only" ]; then
    bash "$PEERS/run_all.sh"
else
    python3 "$PEERS/prepare_corpus.py" --out /tmp/peers-corpus >/dev/null
    python3 "$PEERS/run_bogofilter.py" /tmp/peers-corpus/test "$OUT/bogofilter_trained.tsv" --label trained
fi
python3 "$HERE/run_antispam.py" /tmp/peers-corpus/test "$OUT/antispam_default.tsv" --workers 2
tsvs=()
for f in spamassassin_local_trained spamassassin_net_trained rspamd_trained bogofilter_trained antispam_default; do
    [ -f "$OUT/$f.tsv" ] && tsvs+=("$OUT/$f.tsv")
done
python3 "$PEERS/eval.py" --markdown "${tsvs[@]}" | tee "$OUT/summary_with_antispam.md"
