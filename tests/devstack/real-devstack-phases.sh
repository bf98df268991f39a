#!/bin/bash
# Run the byok plugin's phases under devstack's REAL function library, as stack.sh does.
#
# usage: real-devstack-phases.sh DEVSTACK_DIR ROOT LOCALRC PHASE...
#
# DEVSTACK_DIR: a checkout of https://opendev.org/openstack/devstack (not part of this
# repository; tests/integration/test_devstack_real.py clones a pinned commit into ~/.cache/byok).
# ROOT: a scratch directory: DEST, DATA_DIR, the config files (/etc/cinder, /etc/nova of a real
# node) and a copy of devstack live under it. LOCALRC: the [[local|localrc]] lines of local.conf
# (enable_plugin ...), written to devstack's .localrc.auto, which is where stack.sh puts them.
#
# What runs is devstack's own code: functions, lib/stack, stackrc (with the localrc), lib/*,
# fetch_plugins (git clone of the plugin repository) and run_phase, with stack.sh's shell
# options (xtrace, then errexit from fetch_plugins on). Stubbed are only the outermost
# boundaries, both as executables first on PATH and named STUB: `sudo` (runs its command as
# this user: nothing here needs root) and the `openstack` CLI (logs each call to
# ROOT/openstack.calls and prints a stable fake id; there is no Keystone). The config files
# are redirected from /etc to ROOT/etc after devstack's libraries set their paths, and created
# empty as configure_cinder / configure_nova would have written them by post-config.
set -o nounset
DEVSTACK_DIR=$(cd "$1" && pwd); ROOT=$(mkdir -p "$2" && cd "$2" && pwd); LOCALRC=$3; shift 3

TOP_DIR=$ROOT/devstack
if [[ ! -f $TOP_DIR/stack.sh ]]; then
    mkdir -p "$TOP_DIR"
    git -C "$DEVSTACK_DIR" archive HEAD | tar -x -C "$TOP_DIR"
fi
mkdir -p "$ROOT/stubs" "$ROOT/opt/stack/logs" "$ROOT/opt/stack/data" "$ROOT/etc/cinder" "$ROOT/etc/nova"
cat > "$ROOT/stubs/sudo" <<'EOF'
#!/bin/bash
# STUB sudo (a boundary stub): run the command as the calling user.
while [[ $# -gt 0 && $1 == -* ]]; do case $1 in -u|-g) shift 2 ;; *) shift ;; esac; done
while [[ $# -gt 0 && $1 == *=* ]]; do export "$1"; shift; done
exec "$@"
EOF
cat > "$ROOT/stubs/openstack" <<EOF
#!/bin/bash
# STUB openstack CLI (a boundary stub): log the call, print a stable fake id.
printf '%s\n' "\$*" >> "$ROOT/openstack.calls"
printf '%s' "\$*" | md5sum | cut -c1-32
EOF
chmod +x "$ROOT/stubs/sudo" "$ROOT/stubs/openstack"
{
    echo "DEST=$ROOT/opt/stack"
    echo "DATA_DIR=$ROOT/opt/stack/data"
    echo "LOGDIR=$ROOT/opt/stack/logs"
    echo "STACK_USER=$(id -un)"
    echo "ADMIN_PASSWORD=devstack-admin-password"
    echo "SERVICE_PASSWORD=devstack-service-password"
    echo "DATABASE_PASSWORD=devstack-db-password"
    echo "RABBIT_PASSWORD=devstack-rabbit-password"
    printf '%s\n' "$LOCALRC"
} > "$TOP_DIR/.localrc.auto"

export PATH=$ROOT/stubs:$PATH
cd "$TOP_DIR"
set +o nounset  # devstack is not written for nounset; stack.sh does not set it
set -o xtrace
source "$TOP_DIR/functions"
source "$TOP_DIR/lib/stack"
source "$TOP_DIR/stackrc"
set -o errexit
source "$TOP_DIR/lib/database"
source "$TOP_DIR/lib/rpc_backend"
fetch_plugins
for lib in apache tls infra libraries keystone glance nova placement cinder; do
    source "$TOP_DIR/lib/$lib"
done
CINDER_CONF_DIR=$ROOT/etc/cinder; CINDER_CONF=$CINDER_CONF_DIR/cinder.conf
NOVA_CONF_DIR=$ROOT/etc/nova; NOVA_CONF=$NOVA_CONF_DIR/nova.conf
NOVA_CPU_CONF=$NOVA_CONF_DIR/nova-cpu.conf
touch "$CINDER_CONF" "$NOVA_CONF" "$NOVA_CPU_CONF"
run_phase source
for phase in "$@"; do
    echo "== run_phase stack $phase"
    run_phase stack "$phase"
done
echo "== done"
