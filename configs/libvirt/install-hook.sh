#!/bin/sh
# Installs vdfw's libvirt hook: /etc/libvirt/hooks/qemu, a small script that execs
# `vdfwctl libvirt-hook` with the domain XML libvirt passes on stdin.
#
#   install-hook.sh [--vdfwctl PATH] [--server ADDR] [--hooks-dir DIR] [--env-file FILE] [--force]
#
# --vdfwctl   vdfwctl to run (default: the one in PATH, else /usr/local/bin/vdfwctl).
# --server    write VDFW_SERVER=ADDR into the env file (default: leave the env file alone;
#             without one, vdfwctl's default unix:/run/vdfw/api.sock applies).
# --hooks-dir libvirt's hook directory (default /etc/libvirt/hooks).
# --env-file  settings the hook reads at EVERY run (default /etc/vdfw/libvirt-hook.env): shell
#             assignments of VDFW_SERVER, VDFW_TOKEN, VDFW_CACERT, VDFW_CERT, VDFW_KEY, VDFWCTL.
#             Changing it needs no libvirtd restart.
# --force     replace a qemu hook that vdfw did not install (it is kept as qemu.pre-vdfw).
#
# Idempotent: running it again with the same arguments changes nothing. libvirtd looks for hooks
# only when it starts: restart it once after the first install.
set -eu

vdfwctl=""
server=""
hooks_dir=/etc/libvirt/hooks
env_file=/etc/vdfw/libvirt-hook.env
force=0
while [ $# -gt 0 ]; do
    case "$1" in
        --vdfwctl) vdfwctl=$2; shift 2 ;;
        --server) server=$2; shift 2 ;;
        --hooks-dir) hooks_dir=$2; shift 2 ;;
        --env-file) env_file=$2; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "install-hook.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$vdfwctl" ]; then
    vdfwctl=$(command -v vdfwctl || echo /usr/local/bin/vdfwctl)
fi
case "$vdfwctl" in
    /*) ;;
    *) vdfwctl="$(pwd)/$vdfwctl" ;;
esac
[ -x "$vdfwctl" ] || echo "install-hook.sh: warning: $vdfwctl is not executable yet; the hook fails (and libvirt refuses to start vdfw domains) until it is" >&2

marker="# vdfw libvirt hook"
hook="$hooks_dir/qemu"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
cat >"$tmp" <<HOOK
#!/bin/sh
$marker (installed by install-hook.sh; reinstalling overwrites this file).
# libvirt runs: qemu DOMAIN OP SUBOP EXTRA, the domain XML on stdin. vdfwctl registers the vNICs
# of domains carrying <vdfw:vm> metadata at "prepare begin" and fails if vdfwd cannot, so libvirt
# refuses to start them; it removes them at "stopped end" / "release end".
VDFWCTL='$vdfwctl'
if [ -r '$env_file' ]; then . '$env_file'; fi
export VDFW_SERVER VDFW_TOKEN VDFW_CACERT VDFW_CERT VDFW_KEY
exec "\$VDFWCTL" libvirt-hook "\$@"
HOOK

mkdir -p "$hooks_dir"
if [ -e "$hook" ] && cmp -s "$tmp" "$hook" && [ -x "$hook" ]; then
    echo "install-hook.sh: $hook already installed"
else
    if [ -e "$hook" ] && ! grep -qF "$marker" "$hook"; then
        if [ "$force" -ne 1 ]; then
            echo "install-hook.sh: $hook exists and is not vdfw's; merge it by hand or rerun with --force (it is kept as $hook.pre-vdfw)" >&2
            exit 1
        fi
        cp -p "$hook" "$hook.pre-vdfw"
    fi
    install -m 0755 "$tmp" "$hook"
    echo "install-hook.sh: installed $hook (runs $vdfwctl)"
    echo "install-hook.sh: restart libvirtd if it was running without a qemu hook: it looks for hooks at start"
fi

if [ -n "$server" ]; then
    mkdir -p "$(dirname "$env_file")"
    line="VDFW_SERVER='$server'"
    if [ -e "$env_file" ] && grep -qxF "$line" "$env_file"; then
        :
    elif [ -e "$env_file" ] && grep -q '^VDFW_SERVER=' "$env_file"; then
        sed -i "s|^VDFW_SERVER=.*|$line|" "$env_file"
        echo "install-hook.sh: $env_file: $line"
    else
        echo "$line" >>"$env_file"
        echo "install-hook.sh: $env_file: $line"
    fi
fi
