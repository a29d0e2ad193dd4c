#!/usr/bin/env bash
# A manual page as built (roff from scdoc): groff renders it without a warning, man shows
# it, and it has the sections a reader looks for.
# man_test.sh PAGE_FILE SECTION...
set -euo pipefail
page=$1
shift
fail() { echo "FAIL: $*" >&2; exit 1; }
[ -s "$page" ] || fail "$page is missing or empty (is scdoc installed? scripts/install-deps.sh)"
warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 groff -ww -man -Tutf8 -z "$page" 2>&1) || fail "groff failed: $warnings"
[ -z "$warnings" ] || fail "groff warns: $warnings"
# Not on a terminal, man prints plain text (no overstrikes).
text=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$page" 2>&1) || fail "man -l failed: $text"
for section in NAME SYNOPSIS DESCRIPTION "$@"; do
  grep -q "^$section\$" <<<"$text" || fail "no $section section in $page"
done
echo "$(basename "$page"): $(wc -l <<<"$text") lines, sections checked: NAME SYNOPSIS DESCRIPTION $*"
