#!/bin/sh
# Install OCN Edge onto a Raspberry Pi OS root, offline, from a wheelhouse.
#
#   images/install.sh [--root DIR] [--wheelhouse DIR] [--slot a|b] [--python PATH] [--release-key PEM]
#
# --root DIR        the root filesystem to install into (default /, the running system).
#                   With another root the slot is built with --python of this machine, so
#                   it must be the architecture and Python version of the target; the image
#                   build runs this script inside the target's chroot, where that holds.
# --wheelhouse DIR  the offline release (`make wheelhouse`; default: dist/wheelhouse beside
#                   images/): the folder for this Python and machine, e.g. aarch64-cp311/, its
#                   wheels installed with --require-hashes from its constraints.txt. Nothing
#                   is downloaded.
# --slot a|b        the slot to (re)build and make current (default a). Updates build the
#                   slot that is not current and switch; this script never touches the other.
# --python PATH     the interpreter the slot's venv uses (default /usr/bin/python3).
# --release-key PEM the city's release public key (`ocn-edge release keygen`), installed as
#                   /etc/ocn-edge/release.pub: software updates are checked against it
#                   (docs/updates.md). Without it, updates are refused until one is there.
#
# What it does, each step safe to repeat (running it twice leaves the same system):
#   users ocn-edge and ocn-hub (sysusers.d), /etc/ocn-edge (tmpfiles.d),
#   /opt/ocn-edge/<slot>: a venv with OCN Edge from the wheelhouse, --require-hashes,
#   /opt/ocn-edge/current -> <slot>, switched atomically (rename of a new symlink),
#   the wheels it was built from kept in <slot>/release/ (an update downloads only the
#   wheels that changed), the units, udev rules and journald limits under /etc, and enables
#   ocn-edge.service, ocn-edge-enrol.service, ocn-edge-update.path and
#   systemd-time-wait-sync.service (the hub unit is installed, not enabled). Exit status: 0 installed, 1 a step failed, 2 bad usage or missing input.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=/
wheelhouse=$here/../dist/wheelhouse
slot=a
python=/usr/bin/python3
release_key=

say() { printf 'install.sh: %s\n' "$*" >&2; }
fail() { say "$1"; exit "${2:-1}"; }
usage() { sed -n '4,4p' "$0" | sed 's/^# *//' >&2; fail "$1" 2; }

while [ $# -gt 0 ]; do
    case $1 in
        --root) [ $# -ge 2 ] || usage "--root needs a directory"; root=$2; shift 2 ;;
        --wheelhouse) [ $# -ge 2 ] || usage "--wheelhouse needs a directory"; wheelhouse=$2; shift 2 ;;
        --slot) [ $# -ge 2 ] || usage "--slot needs a or b"; slot=$2; shift 2 ;;
        --python) [ $# -ge 2 ] || usage "--python needs a path"; python=$2; shift 2 ;;
        --release-key) [ $# -ge 2 ] || usage "--release-key needs a PEM file"; release_key=$2; shift 2 ;;
        -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) usage "unknown argument \"$1\"" ;;
    esac
done

case $slot in a|b) ;; *) usage "--slot \"$slot\": expected a or b" ;; esac
[ -d "$root" ] || fail "--root \"$root\": no such directory" 2
root=$(cd "$root" && pwd)
[ "$root" != / ] || [ "$(id -u)" = 0 ] || fail "installing onto this system needs root: sudo $0" 2
[ -d "$wheelhouse" ] || fail "no wheelhouse at \"$wheelhouse\": build one with \`make wheelhouse\` (or pass --wheelhouse DIR)" 2
wheelhouse=$(cd "$wheelhouse" && pwd)
[ -z "$release_key" ] || [ -f "$release_key" ] || fail "--release-key \"$release_key\": no such file (make one with \`ocn-edge release keygen\`)" 2
[ -x "$python" ] || fail "--python \"$python\": not an executable (install python3 and python3-venv)" 2
"$python" -c 'import ensurepip, venv' 2>/dev/null || fail "\"$python\" cannot create a venv with pip: install the python3-venv package" 2
# `make wheelhouse` writes one folder per target, named `uname -m` then the CPython tag
# (aarch64-cp311, ...); a single target's folder may also be given directly.
target=$("$python" -c 'import platform, sys; print("%s-cp%d%d" % ((platform.machine(),) + sys.version_info[:2]))')
[ -f "$wheelhouse/constraints.txt" ] || wheelhouse=$wheelhouse/$target
[ -f "$wheelhouse/constraints.txt" ] || fail "no $target folder with a constraints.txt in the wheelhouse (\"$wheelhouse\"): every gateway installs the same hash-pinned set; rebuild it with \`make wheelhouse\`" 2
for tool in systemd-sysusers systemd-tmpfiles systemctl; do
    command -v "$tool" >/dev/null || fail "needs $tool (package systemd)" 2
done

# A foreign root must run the Python the slot is built for: compare the minor versions.
version=$("$python" -c 'import sys; print("python%d.%d" % sys.version_info[:2])')
if [ -L "$root/usr/bin/python3" ]; then
    target=$(basename "$(readlink "$root/usr/bin/python3")")
    [ "$target" = "$version" ] || fail "the target root runs $target but --python \"$python\" is $version: the slot would not run there" 2
fi

etc=$root/etc
opt=$root/opt/ocn-edge

say "users ocn-edge and ocn-hub, /etc/ocn-edge"
install -D -m 0644 "$here/sysusers/ocn-edge.conf" "$etc/sysusers.d/ocn-edge.conf"
install -D -m 0644 "$here/tmpfiles/ocn-edge.conf" "$etc/tmpfiles.d/ocn-edge.conf"
systemd-sysusers --root="$root" ocn-edge.conf
systemd-tmpfiles --root="$root" --create ocn-edge.conf

# The slot is built beside its final place and renamed into it, so a failed build leaves
# the old slot as it was. Built elsewhere than where it runs, its scripts must not name the
# venv's path: their "#!" line is replaced by one that finds python beside the script.
say "slot $slot: OCN Edge from $wheelhouse"
mkdir -p "$opt"
building=$opt/.$slot.building
rm -rf "$building"
"$python" -m venv "$building"
"$building/bin/python" -m pip install --quiet --disable-pip-version-check --no-index \
    --find-links "$wheelhouse" --require-hashes -r "$wheelhouse/constraints.txt" \
    || fail "pip could not install from \"$wheelhouse\" (see above); slot $slot is unchanged"
rm -f "$building"/bin/activate* "$building"/bin/Activate.ps1
for script in "$building"/bin/*; do
    [ -f "$script" ] && [ ! -L "$script" ] || continue
    case $(head -n 1 "$script") in
        "#!$building/bin/python"*)
            {
                printf '#!/bin/sh\n'
                printf "'''exec' \"\$(dirname -- \"\$(realpath -- \"\$0\")\")/python\" \"\$0\" \"\$@\"\n"
                printf "' '''\n"
                tail -n +2 "$script"
            } >"$script.new"
            chmod 0755 "$script.new"
            mv "$script.new" "$script"
            ;;
    esac
done
"$building/bin/ocn-edge" --version >/dev/null || fail "the new slot's ocn-edge does not run; slot $slot is unchanged"
# The wheels the slot was built from, laid out as in a release bundle (docs/updates.md): an
# update fetches only the wheels whose SHA-256 is not among them.
release_target=$("$building/bin/python" -c 'import platform, sys; print("%s-cp%d%d" % ((platform.machine(),) + sys.version_info[:2]))')
mkdir -p "$building/release/wheels" "$building/release/targets/$release_target"
cp "$wheelhouse"/*.whl "$building/release/wheels/"
cp "$wheelhouse/constraints.txt" "$building/release/targets/$release_target/constraints.txt"
rm -rf "$opt/$slot"
mv "$building" "$opt/$slot"

say "current -> $slot"
ln -sfn "$slot" "$opt/.current.new"
mv -T "$opt/.current.new" "$opt/current"

say "units, udev rules, journald limits"
for unit in "$here"/systemd/*.service "$here"/systemd/*.path "$here"/systemd/*.service.d/*.conf; do
    install -D -m 0644 "$unit" "$etc/systemd/system/${unit#"$here"/systemd/}"
done
if [ -n "$release_key" ]; then
    install -D -m 0644 "$release_key" "$etc/ocn-edge/release.pub"
fi
install -D -m 0644 "$here/udev/99-ocn-serial.rules" "$etc/udev/rules.d/99-ocn-serial.rules"
install -D -m 0644 "$here/journald/ocn-edge.conf" "$etc/systemd/journald.conf.d/ocn-edge.conf"
systemctl --root="$root" enable ocn-edge.service ocn-edge-enrol.service ocn-edge-update.path systemd-time-wait-sync.service

# On the running system, let systemd and udev see the new files now; the gateway restarts
# on the new slot if it was running. journald's limits apply from its next start.
if [ "$root" = / ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    command -v udevadm >/dev/null && udevadm control --reload && udevadm trigger --subsystem-match=tty
    systemctl try-restart ocn-edge.service
fi
say "installed $("$opt/current/bin/ocn-edge" --version) in $opt/$slot"
