# bash completion for vgpu and lsmdev (vgpu-mdev). Installed with the package; load it with
#   source "$(npm root -g)/vgpu-mdev/completion/vgpu.bash"      (global install)
#   source node_modules/vgpu-mdev/completion/vgpu.bash          (local install)
# or copy it to /usr/share/bash-completion/completions/vgpu (and link lsmdev to it).
# UUIDs and parents come from `vgpu list` and `vgpu list -d` under the --root given on the line (else $VGPU_ROOT).

_vgpu_root_arg() {
  local i
  for ((i = 1; i < ${#COMP_WORDS[@]} - 1; i++)); do
    if [[ ${COMP_WORDS[i]} == --root ]]; then
      printf -- '--root %q' "${COMP_WORDS[i + 1]}"
      return
    fi
  done
}

_vgpu_devices() {
  # $1: the column of `vgpu list` to print (1: UUID, 2: parent)
  local root
  root=$(_vgpu_root_arg)
  { vgpu list -d $root 2>/dev/null; vgpu list $root 2>/dev/null; } | awk -v c="$1" '/^[0-9a-f]/ { print $c }' | sort -u
}

_vgpu_types() {
  local root
  root=$(_vgpu_root_arg)
  vgpu types $root 2>/dev/null | awk '/^  [^ ]/ { print $1 }' | sort -u
}

_vgpu() {
  local cur prev cmd words
  cur=${COMP_WORDS[COMP_CWORD]}
  prev=${COMP_WORDS[COMP_CWORD - 1]}
  if [[ ${COMP_WORDS[0]##*/} == lsmdev ]]; then
    cmd=list
  else
    cmd=${COMP_WORDS[1]}
  fi
  case $prev in
    -u | --uuid)
      COMPREPLY=($(compgen -W "$(_vgpu_devices 1)" -- "$cur"))
      return
      ;;
    -p | --parent)
      COMPREPLY=($(compgen -W "$(_vgpu_devices 2) mtty 0000:00:02.0" -- "$cur"))
      return
      ;;
    -t | --type)
      COMPREPLY=($(compgen -W "$(_vgpu_types)" -- "$cur"))
      return
      ;;
    --root)
      COMPREPLY=($(compgen -d -- "$cur"))
      return
      ;;
    --jsonfile | --config | -c | --trace | --socket | -s | --perfetto | --html)
      COMPREPLY=($(compgen -f -- "$cur"))
      return
      ;;
    --seed | --value | -i | --index | --handshake-timeout | --poll-max-us | --vm | --gma | --gva)
      return
      ;;
    --design)
      COMPREPLY=($(compgen -W "no-iommu identity gpa per-vm-iova dma-api ats" -- "$cur"))
      return
      ;;
  esac
  if [[ ${COMP_WORDS[0]##*/} != lsmdev && $COMP_CWORD -eq 1 ]]; then
    words="host types list define undefine modify start stop start-parent-mdevs serve demo run compare explain help --version --help"
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
    return
  fi
  case $cmd in
    host) words="--config --root --poll-max-us" ;;
    types) words="-p --parent --dumpjson --root" ;;
    list | lsmdev) words="-d --defined -u --uuid -p --parent -v --verbose --dumpjson --xml --root" ;;
    define) words="-u --uuid -p --parent -t --type -a --auto --jsonfile -f --force --root" ;;
    undefine) words="-u --uuid -p --parent -f --force --root" ;;
    modify) words="-u --uuid -p --parent -t --type --addattr --value --delattr -i --index -a --auto -m --manual -l --live -d --defined --jsonfile -f --force --root" ;;
    start) words="-u --uuid -p --parent -t --type --jsonfile -f --force --root" ;;
    stop) words="-u --uuid -f --force --root" ;;
    start-parent-mdevs)
      words="--root"
      [[ $cur != -* ]] && words="$words $(_vgpu_devices 2) mtty 0000:00:02.0"
      ;;
    serve) words="-t --type -s --socket -u --uuid -c --config --once --trace --handshake-timeout --poll-max-us" ;;
    demo) words="--seed --json --trace --perfetto" ;;
    run)
      words="--seed --json --trace --perfetto -q --quiet"
      if [[ $cur != -* ]]; then
        COMPREPLY=($(compgen -f -X '!*.json' -- "$cur") $(compgen -d -- "$cur"))
        return
      fi
      ;;
    compare)
      words="--design --seed --json --html --perfetto -q --quiet"
      if [[ $cur != -* ]]; then
        COMPREPLY=($(compgen -f -X '!*.json' -- "$cur") $(compgen -d -- "$cur"))
        return
      fi
      ;;
    explain) words="--vm --gma --gva --seed --json" ;;
    *) words="--help" ;;
  esac
  COMPREPLY=($(compgen -W "$words --help" -- "$cur"))
}

complete -F _vgpu vgpu
complete -F _vgpu lsmdev
