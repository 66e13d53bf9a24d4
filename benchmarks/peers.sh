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
# Output: $OUT (default /tmp/peers-out)/summary_with_antispam.md, beside the TSVs; then
# `python benchmarks/accuracy.py --model default --online --peers $OUT` puts the table in RESULTS.md.
# Env: PEERS (default ../shared/peers beside the checkout), OUT. The corpus is the peers' own
# (../shared/corpora/spamassassin, extracted to /tmp/peers-corpus by their prepare_corpus.py).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEERS="${PEERS:-$HERE/../../shared/peers}"
export OUT="${OUT:-/tmp/peers-out}"
die() { echo "peers.sh: $*" >&2; exit 2; }
case "${1:-}" in
    "") ours_only=0 ;;
    --ours-only) ours_only=1 ;;
    *) die "usage: benchmarks/peers.sh [--ours-only] (unknown argument: $1)" ;;
esac
[ $# -le 1 ] || die "usage: benchmarks/peers.sh [--ours-only]"
for f in run_all.sh prepare_corpus.py run_bogofilter.py eval.py; do
    [ -f "$PEERS/$f" ] || die "the peers' scripts are not in $PEERS (no $f): set PEERS to the shared/peers directory"
done
if [ "$ours_only" = 1 ]; then
    for f in spamassassin_local_trained spamassassin_net_trained rspamd_trained; do
        [ -f "$OUT/$f.tsv" ] || die "--ours-only reuses an earlier full run, but $OUT/$f.tsv is missing: run benchmarks/peers.sh first"
    done
    [ -f /tmp/peers-state/bogofilter/wordlist.db ] \
        || die "--ours-only reruns the trained bogofilter, but /tmp/peers-state/bogofilter has no wordlist: run benchmarks/peers.sh first"
fi
mkdir -p "$OUT"
if [ "$ours_only" = 0 ]; then
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
