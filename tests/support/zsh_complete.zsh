#!/usr/bin/env zsh
# zsh_complete.zsh DIR LINE: completes LINE in an interactive zsh (in a pseudo-terminal) with
# the completion functions in DIR, and prints the matches offered, one a line.
zmodload zsh/zpty || exit 9
dir=$1 line=$2
out=$(mktemp) || exit 9
zpty z zsh -f -i
zpty -w z "PS1='> '; fpath=(${(q)dir} \$fpath); autoload -Uz compinit; compinit -u -D"
zpty -w z "compadd() { local -a __m; builtin compadd -O __m \"\$@\"; print -rl -- \$__m >> ${(q)out}; builtin compadd \"\$@\"; }"
zpty -w z "zstyle ':completion:*' list-prompt ''; zstyle ':completion:*' menu no; LISTMAX=10000"
zpty -w z "print DONE-SETUP"
zpty -r -m z setup '*DONE-SETUP*DONE-SETUP*' || exit 7
zpty -w -n z "$line"$'\t'
# Then a marker line: when it is echoed, completion has ended.
zpty -w -n z $'\C-e\C-u'"print COMPLETION-END"$'\n'
zpty -r -m z rest '*COMPLETION-END*COMPLETION-END*' || exit 6
zpty -d z
grep -v "^$" $out | sort -u
rm -f $out
