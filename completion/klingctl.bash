# bash completion for klingctl(1): commands, options, job states, and the ids of the
# running daemon's jobs (asked over its socket, the one --socket or $KLINGD_SOCKET names).
# Installed to /usr/share/bash-completion/completions/klingctl.

_klingctl_ids() {
    # $1: a state, or empty for every job. Quiet when klingd cannot be reached.
    local sock=()
    [[ -n $_klingctl_socket ]] && sock=(--socket "$_klingctl_socket")
    local state=()
    [[ -n $1 ]] && state=(--state "$1")
    # A daemon that does not answer costs the prompt two seconds at most.
    local bound=()
    command -v timeout >/dev/null && bound=(timeout 2)
    "${bound[@]}" "${_klingctl_cmd:-klingctl}" "${sock[@]}" list -q --limit 2000 "${state[@]}" 2>/dev/null
}

_klingctl() {
    local cur prev words cword
    local split=false
    if declare -F _init_completion >/dev/null; then
        # -s: "--socket=PATH" is one word, and when completing it, prev=--socket, cur=PATH.
        _init_completion -s || return
    else
        # Plain bash splits "--socket=PATH" at the "=": the words are --socket, =, PATH.
        cur=${COMP_WORDS[COMP_CWORD]}
        prev=${COMP_WORDS[COMP_CWORD - 1]}
        words=("${COMP_WORDS[@]}")
        cword=$COMP_CWORD
        if [[ $cur == = ]]; then
            cur=""
        elif [[ $prev == = ]] && ((COMP_CWORD >= 2)); then
            prev=${COMP_WORDS[COMP_CWORD - 2]}
        fi
    fi

    local commands="submit list show wait cancel retry pause resume watch stats nodes validate purge top"
    local states="pending submitting queued processing completed failed expired cancelled"

    # The command, and the socket named before it.
    local i cmd="" _klingctl_socket="" _klingctl_cmd=${words[0]}
    for ((i = 1; i < cword; i++)); do
        case ${words[i]} in
        --socket)
            if [[ ${words[i + 1]} == = ]]; then
                _klingctl_socket=${words[i + 2]}; ((i += 2))
            else
                _klingctl_socket=${words[i + 1]}; ((i++))
            fi
            ;;
        --socket=*) _klingctl_socket=${words[i]#--socket=} ;;
        -* | =) ;;
        *) cmd=${words[i]}; break ;;
        esac
    done

    if [[ $prev == --socket ]]; then
        compopt -o filenames 2>/dev/null
        COMPREPLY=($(compgen -f -- "$cur"))
        return
    fi
    if [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W "$commands --socket --help" -- "$cur"))
        return
    fi

    local opts=""
    case $cmd in
    submit)
        if [[ $cur != -* ]]; then
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -f -X '!*.json' -- "$cur") $(compgen -d -- "$cur"))
            return
        fi
        ;;
    list)
        case $prev in
        --state) COMPREPLY=($(compgen -W "$states" -- "$cur")); return ;;
        --model) COMPREPLY=($(compgen -W "kling-o1 kling-o1-video-to-video-edit" -- "$cur")); return ;;
        --limit) return ;;
        esac
        opts="--state --model --limit --json -q --quiet"
        ;;
    show) opts="--json"; [[ $cur != -* ]] && { COMPREPLY=($(compgen -W "$(_klingctl_ids)" -- "$cur")); return; } ;;
    wait)
        [[ $prev == --timeout ]] && return
        opts="--timeout"
        [[ $cur != -* ]] && { COMPREPLY=($(compgen -W "$(_klingctl_ids)" -- "$cur")); return; }
        ;;
    watch) opts="--json"; [[ $cur != -* ]] && { COMPREPLY=($(compgen -W "$(_klingctl_ids)" -- "$cur")); return; } ;;
    cancel) [[ $cur != -* ]] && { COMPREPLY=($(compgen -W "$(_klingctl_ids pending)" -- "$cur")); return; } ;;
    retry)
        [[ $cur != -* ]] && {
            COMPREPLY=($(compgen -W "$(_klingctl_ids failed) $(_klingctl_ids expired)" -- "$cur"))
            return
        }
        ;;
    stats | nodes) opts="--json" ;;
    validate)
        if [[ $prev == --config ]]; then
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -f -- "$cur"))
            return
        fi
        if [[ $cur != -* ]]; then
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -f -X '!*.json' -- "$cur") $(compgen -d -- "$cur"))
            return
        fi
        opts="--config"
        ;;
    purge) [[ $prev == --older-than ]] && return; opts="--older-than" ;;
    top) [[ $prev == --interval || $prev == -n || $prev == --iterations ]] && return; opts="--interval -n --iterations" ;;
    esac
    COMPREPLY=($(compgen -W "$opts --help" -- "$cur"))
}

complete -F _klingctl klingctl
