#!/usr/bin/env bash
# Kaldi/ESPnet-style option parsing: for every `--some-option VALUE` on the command line, set
# the shell variable `some_option=VALUE`, but only if the caller already declared it (so typos
# fail loudly). Source it after declaring defaults:  . utils/parse_options.sh
# `--help` prints the caller's header comment (`help_message`) and the variables it knows.

while true; do
  [ -z "${1:-}" ] && break
  case "$1" in
    --help|-h)
      echo "${help_message:-}" >&2
      exit 0 ;;
    --*=*)
      echo "$0: use '--option value', not '--option=value' ($1)" >&2
      exit 1 ;;
    --*)
      name=$(echo "$1" | sed 's/^--//; s/-/_/g')
      if ! declare -p "$name" >/dev/null 2>&1; then
        echo "$0: invalid option $1" >&2
        exit 1
      fi
      if [ $# -lt 2 ]; then
        echo "$0: option $1 needs a value" >&2
        exit 1
      fi
      old_value=${!name}
      case "$old_value" in
        true|false)
          if [ "$2" != true ] && [ "$2" != false ]; then
            echo "$0: option $1 takes true or false, got '$2'" >&2
            exit 1
          fi ;;
      esac
      printf -v "$name" '%s' "$2"
      shift 2 ;;
    *) break ;;
  esac
done
true
