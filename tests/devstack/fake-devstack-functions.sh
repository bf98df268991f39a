#!/bin/bash
#
# FAKE devstack function library for testing devstack/plugin.sh without devstack.
#
# Source it, then devstack/settings, then ``source devstack/plugin.sh <mode> [phase]``, the way
# stack.sh does. It defines the devstack functions and variables the plugin uses. Functions that
# would install packages or talk to Keystone only append the call to $FAKE_DEVSTACK_LOG (one
# line per call: the function name and its arguments, shell-quoted with printf %q) and print a
# plausible result; iniset/iniget really edit/read ini files (awk) so the resulting
# nova.conf/cinder.conf can be loaded by oslo.config.
#
# Required: FAKE_DEVSTACK_ROOT (a scratch directory). Any devstack variable below keeps its
# value if already set.

: "${FAKE_DEVSTACK_ROOT:?FAKE_DEVSTACK_ROOT must point at a scratch directory}"
FAKE_DEVSTACK_LOG=${FAKE_DEVSTACK_LOG:-$FAKE_DEVSTACK_ROOT/calls.log}

# devstack's variables (stackrc, lib/keystone, lib/nova, lib/cinder), pointing into the scratch dir
DEST=${DEST:-$FAKE_DEVSTACK_ROOT/opt/stack}
DATA_DIR=${DATA_DIR:-$DEST/data}
TOP_DIR=${TOP_DIR:-$DEST/devstack}
NOVA_CONF=${NOVA_CONF:-$FAKE_DEVSTACK_ROOT/etc/nova/nova.conf}
NOVA_CPU_CONF=${NOVA_CPU_CONF:-$FAKE_DEVSTACK_ROOT/etc/nova/nova-cpu.conf}
CINDER_CONF=${CINDER_CONF:-$FAKE_DEVSTACK_ROOT/etc/cinder/cinder.conf}
KEYSTONE_SERVICE_URI=${KEYSTONE_SERVICE_URI:-http://192.0.2.10/identity}
SERVICE_PASSWORD=${SERVICE_PASSWORD:-fake-service-password}
SERVICE_DOMAIN_NAME=${SERVICE_DOMAIN_NAME:-Default}
SERVICE_PROJECT_NAME=${SERVICE_PROJECT_NAME:-service}
PYTHON=${PYTHON:-python3}
ENABLED_SERVICES=${ENABLED_SERVICES:-key,n-api,n-cpu,n-cond,c-api,c-sch,c-vol,barbican}

function _fake_log {
    local line
    line=$(printf ' %q' "$@")
    echo "${line# }" >>"$FAKE_DEVSTACK_LOG"
}

# A stable fake Keystone id (32 hex) per name.
function _fake_id {
    printf '%s' "$*" | md5sum | cut -c1-32
}

# Output and control (functions-common)
function echo_summary { echo "$@"; }
function warn { echo "[WARNING] ${BASH_SOURCE[1]}:$1 $2" >&2; _fake_log warn "$2"; return 0; }
function die {
    local line=$1
    shift
    echo "[ERROR] ${BASH_SOURCE[1]}:$line $*" >&2
    _fake_log die "$*"
    exit 1
}

# trueorfalse default VARNAME (devstack's modern signature: the variable's *name*)
function trueorfalse {
    local default=$1
    local testval=${!2:-}
    case "$testval" in
        "") echo "$default" ;;
        1|yes|Yes|YES|true|True|TRUE|on|On|ON) echo "True" ;;
        0|no|No|NO|false|False|FALSE|off|Off|OFF) echo "False" ;;
        *) echo "$default" ;;
    esac
}

# Services
function is_service_enabled {
    local service
    for service in "$@"; do
        [[ ",$ENABLED_SERVICES," == *",$service,"* ]] && return 0
        [[ "$service" == nova && ",$ENABLED_SERVICES" == *",n-"* ]] && return 0
        [[ "$service" == cinder && ",$ENABLED_SERVICES" == *",c-"* ]] && return 0
    done
    return 1
}
function enable_service {
    local service
    for service in "$@"; do
        is_service_enabled "$service" || ENABLED_SERVICES="$ENABLED_SERVICES,$service"
    done
    ENABLED_SERVICES=${ENABLED_SERVICES#,}
}
function disable_service {
    local service
    for service in "$@"; do
        ENABLED_SERVICES=$(echo ",$ENABLED_SERVICES," | sed -e "s/,$service,/,/g" -e 's/^,//;s/,$//')
    done
}
function define_plugin { _fake_log define_plugin "$@"; }
function plugin_requires { _fake_log plugin_requires "$@"; }

# Config files, with devstack's line-based semantics: iniset replaces "option = ..." inside the
# first [section] or inserts it right after the header (appending the section if missing) and
# leaves every other line alone. awk, not sed -i: portable, and values reach it through the
# environment, so no character in a value is special.
# shellcheck disable=SC2016  # an awk program: $0, $1 are awk's
_FAKE_INI_AWK='
{ lines[NR] = $0 }
function header_at(i,    t) { t = lines[i]; sub(/[ \t]+$/, "", t); return t }
function find(    i, j) {
    hs = 0; he = NR + 1; at = 0
    for (i = 1; i <= NR; i++) if (header_at(i) == "[" ENVIRON["FI_SECTION"] "]") { hs = i; break }
    if (!hs) return
    for (j = hs + 1; j <= NR; j++) if (header_at(j) ~ /^\[.*\]$/) { he = j; break }
    for (j = hs + 1; j < he; j++)
        if (index(lines[j], ENVIRON["FI_OPTION"]) == 1 \
            && substr(lines[j], length(ENVIRON["FI_OPTION"]) + 1) ~ /^[ \t]*=/) { at = j; break }
}
END {
    find()
    if (ENVIRON["FI_MODE"] == "get") {
        if (at) { v = substr(lines[at], index(lines[at], "=") + 1); gsub(/^[ \t]+|[ \t]+$/, "", v); print v }
        exit
    }
    kv = ENVIRON["FI_OPTION"] " = " ENVIRON["FI_VALUE"]
    for (i = 1; i <= NR; i++) {
        print (i == at ? kv : lines[i])
        if (i == hs && !at) print kv
    }
    if (!hs) { print ""; print "[" ENVIRON["FI_SECTION"] "]"; print kv }
}'

function iniset {
    while [[ "${1:-}" == -* ]]; do shift; done  # -sudo, -p
    _fake_log iniset "$@"
    local file=$1
    mkdir -p "$(dirname "$file")"
    [[ -f "$file" ]] || : >"$file"
    FI_MODE=set FI_SECTION=$2 FI_OPTION=$3 FI_VALUE=$4 awk "$_FAKE_INI_AWK" "$file" >"$file.fake-iniset"
    mv -f "$file.fake-iniset" "$file"
}
function iniget {
    [[ -f "$1" ]] || return 0
    FI_MODE=get FI_SECTION=$2 FI_OPTION=$3 awk "$_FAKE_INI_AWK" "$1"
}

# Python packages: recorded, never installed
function pip_install { _fake_log pip_install "$@"; }
function setup_develop { _fake_log setup_develop "$@"; }
function setup_install { _fake_log setup_install "$@"; }

# Keystone (functions-common's get_or_* helpers print the id)
function get_or_create_user { _fake_log get_or_create_user "$@"; _fake_id "user:$1"; }
function get_or_create_project { _fake_log get_or_create_project "$@"; _fake_id "project:$1"; }
function get_or_create_role { _fake_log get_or_create_role "$@"; _fake_id "role:$1"; }
function get_or_add_user_project_role {
    _fake_log get_or_add_user_project_role "$@"
    _fake_id "assignment:$1:$2:$3"
}
# The CLI: the call, then what it saw in the environment (set/unset only, never a value).
function openstack {
    _fake_log openstack "$@"
    _fake_log openstack-env "OS_PASSWORD=${OS_PASSWORD:+set}" "OS_CLOUD=${OS_CLOUD:+set}"
    echo "fake-openstack-output"
}
