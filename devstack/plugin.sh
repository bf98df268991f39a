#!/bin/bash
#
# byok devstack plugin: makes castellan backend ``byok`` the key manager of Cinder and Nova.
#
# Sourced by stack.sh as ``source plugin.sh stack install|post-config|extra|test-config``, by
# unstack.sh as ``source plugin.sh unstack`` and by clean.sh as ``source plugin.sh clean``,
# always after devstack/settings. devstack runs with errexit and xtrace on: every command here
# must succeed or mean failure. Functions are prefixed byok_/install_byok/configure_byok/
# cleanup_byok because this file shares devstack's shell.
#
# Phases:
#   stack install      pip-install byok (editable, no dependencies) into devstack's Python
#   stack post-config  [key_manager]/[barbican]/[byok] in cinder.conf, nova.conf and (with
#                      n-cpu) nova-cpu.conf; make sure the cinder/nova service users exist with
#                      a role on the service project and record their ids. Barbican ACLs are
#                      granted per secret by the key's owner: devstack/tools/byok-grant.
#   stack extra        warn if something replaced backend=byok; smoke check if BYOK_RUN_SMOKE
#   unstack            nothing (byok runs no process of its own)
#   clean              remove $BYOK_STATE_DIR

# Helpers
# -------

# The Python that runs Nova and Cinder.
function byok_python {
    echo "${BYOK_PYTHON:-${PYTHON:-python3}}"
}

# castellan's [barbican] auth_endpoint: Keystone v3.
function byok_auth_endpoint {
    if [[ -n "${BYOK_AUTH_ENDPOINT:-}" ]]; then
        echo "$BYOK_AUTH_ENDPOINT"
    else
        echo "${KEYSTONE_SERVICE_URI:-}/v3"
    fi
}

# The services to configure on this node: enabled in devstack and not opted out.
function byok_consumers {
    local consumers=""
    if [[ "$(trueorfalse True BYOK_CONFIGURE_CINDER)" == "True" ]] && is_service_enabled cinder; then
        consumers+=" cinder"
    fi
    if [[ "$(trueorfalse True BYOK_CONFIGURE_NOVA)" == "True" ]] && is_service_enabled nova; then
        consumers+=" nova"
    fi
    echo "${consumers# }"
}

# The config files a consumer service reads, one per line. nova-compute, the process that
# attaches encrypted volumes, reads its own nova-cpu.conf.
function byok_confs_for {
    case "$1" in
        cinder)
            echo "$CINDER_CONF"
            ;;
        nova)
            echo "$NOVA_CONF"
            if is_service_enabled n-cpu && [[ -n "${NOVA_CPU_CONF:-}" \
                    && "$NOVA_CPU_CONF" != "$NOVA_CONF" ]]; then
                echo "$NOVA_CPU_CONF"
            fi
            ;;
        *)
            die $LINENO "byok: unknown consumer service '$1'"
            ;;
    esac
}

# Fail in post-config with a clear message rather than later, when oslo.config refuses to
# start cinder-volume or nova-compute over a malformed value.
function byok_validate_settings {
    if [[ ! "$BYOK_SESSION_TTL" =~ ^[0-9]+$ ]]; then
        die $LINENO "byok: BYOK_SESSION_TTL must be a whole number of seconds, not '$BYOK_SESSION_TTL'"
    fi
    if [[ ! "$BYOK_SESSION_CACHE_SIZE" =~ ^[1-9][0-9]*$ ]]; then
        die $LINENO "byok: BYOK_SESSION_CACHE_SIZE must be >= 1, not '$BYOK_SESSION_CACHE_SIZE'"
    fi
    case "$BYOK_BARBICAN_ENDPOINT_TYPE" in
        public|internal|admin) ;;
        *) die $LINENO "byok: BYOK_BARBICAN_ENDPOINT_TYPE must be public, internal or admin" ;;
    esac
    if [[ -z "${BYOK_AUTH_ENDPOINT:-}" && -z "${KEYSTONE_SERVICE_URI:-}" ]]; then
        die $LINENO "byok: neither BYOK_AUTH_ENDPOINT nor KEYSTONE_SERVICE_URI is set"
    fi
}

# Lines "<consumer> <conf file>" written by post-config.
function byok_configured_list {
    echo "$BYOK_STATE_DIR/configured"
}

# Lines "<service user> <keystone user id>" written by post-config.
function byok_service_users_list {
    echo "$BYOK_STATE_DIR/service-users"
}

# Install
# -------

function install_byok {
    local python
    python=$(byok_python)
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        die $LINENO "byok needs Python >= 3.11 and '$python' is older or missing (set BYOK_PYTHON)"
    fi
    # --no-deps: byok's pyproject pins the keystone and barbican releases its embedded test
    # stack runs; resolving them here would replace devstack's own git checkouts. The key
    # manager needs only castellan, python-barbicanclient and oslo.config, which Nova and Cinder
    # already brought in.
    pip_install --no-deps -e "$BYOK_DIR"
    if [[ -n "${BYOK_CLI_PACKAGES:-}" ]]; then
        # A space-separated list of package names: word splitting is intended.
        # shellcheck disable=SC2086
        pip_install $BYOK_CLI_PACKAGES
    fi
}

# Configure
# ---------

# Write byok's options into one service's config file (iniset replaces, so re-runs are no-ops).
function byok_configure_conf {
    local conf=$1
    local consumer=$2
    local auth_endpoint
    auth_endpoint=$(byok_auth_endpoint)

    iniset "$conf" key_manager backend byok

    iniset "$conf" barbican auth_endpoint "$auth_endpoint"
    if [[ -n "${BYOK_BARBICAN_ENDPOINT:-}" ]]; then
        iniset "$conf" barbican barbican_endpoint "$BYOK_BARBICAN_ENDPOINT"
    fi
    iniset "$conf" barbican barbican_endpoint_type "$BYOK_BARBICAN_ENDPOINT_TYPE"
    if [[ "$(trueorfalse False BYOK_SEND_SERVICE_USER_TOKEN)" == "True" ]]; then
        # The service's own credentials, sent as X-Service-Token next to the user's token.
        iniset "$conf" barbican send_service_user_token True
        iniset "$conf" barbican_service_user auth_type password
        iniset "$conf" barbican_service_user auth_url "$auth_endpoint"
        iniset "$conf" barbican_service_user username "$consumer"
        iniset "$conf" barbican_service_user password "$SERVICE_PASSWORD"
        iniset "$conf" barbican_service_user user_domain_name "$SERVICE_DOMAIN_NAME"
        iniset "$conf" barbican_service_user project_name "$SERVICE_PROJECT_NAME"
        iniset "$conf" barbican_service_user project_domain_name "$SERVICE_DOMAIN_NAME"
    else
        iniset "$conf" barbican send_service_user_token False
    fi

    iniset "$conf" byok consumer_service "$consumer"
    iniset "$conf" byok session_ttl "$BYOK_SESSION_TTL"
    iniset "$conf" byok session_cache_size "$BYOK_SESSION_CACHE_SIZE"
}

# Service ACL prerequisites. A Barbican ACL names Keystone *user ids* and is set on each secret
# by the key's owner, so devstack cannot grant it in advance. What it can do: make sure the
# cinder/nova users exist and can get a token scoped to the service project (that is all an ACL
# read needs), and record their ids so byok-grant can turn "--to cinder" into the right id.
function byok_service_acl_prereqs {
    local ids_file tmp consumer user_id
    ids_file=$(byok_service_users_list)
    if ! is_service_enabled key; then
        echo "byok: Keystone is not enabled on this node; service users are set up on the controller"
        return 0
    fi
    tmp="$ids_file.tmp"
    : >"$tmp"
    get_or_create_role "$BYOK_SERVICE_ROLE" >/dev/null
    for consumer in "$@"; do
        # Normally a no-op: devstack created the user with this password in create_*_accounts.
        user_id=$(get_or_create_user "$consumer" "$SERVICE_PASSWORD" "$SERVICE_DOMAIN_NAME")
        if [[ -z "$user_id" ]]; then
            die $LINENO "byok: could not find or create the '$consumer' service user"
        fi
        get_or_add_user_project_role "$BYOK_SERVICE_ROLE" "$user_id" "$SERVICE_PROJECT_NAME" \
            "$SERVICE_DOMAIN_NAME" "$SERVICE_DOMAIN_NAME" >/dev/null
        printf '%s %s\n' "$consumer" "$user_id" >>"$tmp"
    done
    mv -f "$tmp" "$ids_file"
    byok_print_grant_instructions
}

function byok_print_grant_instructions {
    local consumer user_id
    echo "byok: Barbican ACLs are per secret and set by the key's owner; none is pre-granted."
    while read -r consumer user_id; do
        echo "byok:   service user $consumer = $user_id"
    done <"$(byok_service_users_list)"
    echo "byok: to let Cinder/Nova use a key without the user's token (restart, evacuate,"
    echo "byok: migrate), its owner runs, with their own credentials:"
    echo "byok:   $BYOK_PLUGIN_DIR/tools/byok-grant SECRET_HREF --to cinder --to nova [--private]"
    echo "byok:   (same as: openstack acl user add --user <service user id> SECRET_HREF)"
}

function configure_byok {
    local list tmp consumers consumer confs conf
    byok_validate_settings
    mkdir -p "$BYOK_STATE_DIR"
    list=$(byok_configured_list)
    tmp="$list.tmp"
    consumers=$(byok_consumers)
    if [[ -z "$consumers" ]]; then
        warn $LINENO "byok: neither cinder nor nova is enabled on this node; nothing to configure"
    fi
    : >"$tmp"
    for consumer in $consumers; do
        confs=$(byok_confs_for "$consumer")
        # fd 3 throughout: nothing called in a loop body can consume the list as its stdin
        while read -r -u 3 conf; do
            byok_configure_conf "$conf" "$consumer"
            printf '%s %s\n' "$consumer" "$conf" >>"$tmp"
        done 3<<<"$confs"
    done
    mv -f "$tmp" "$list"
    if [[ -n "$consumers" ]]; then
        # shellcheck disable=SC2086
        byok_service_acl_prereqs $consumers
    fi
}

# Extra
# -----

# Barbican's own plugin writes "backend = barbican" into the same files in its post-config, and
# local.conf [[post-config|...]] sections are merged after every plugin's post-config. Whichever
# runs last wins; say so loudly instead of leaving a stack that silently is not using byok.
function byok_check_backend {
    local list consumer conf backend
    list=$(byok_configured_list)
    if [[ ! -f "$list" ]]; then
        return 0
    fi
    while read -r -u 3 consumer conf; do
        backend=$(iniget "$conf" key_manager backend)
        if [[ "$backend" != "byok" ]]; then
            # one message argument: devstack's warn prints only its second argument
            warn $LINENO "byok: $conf has [key_manager] backend = '$backend', not byok; put 'enable_plugin byok' after 'enable_plugin barbican' in local.conf"
        fi
    done 3<"$list"
}

# The service user gets a project-scoped token: the one thing a Barbican ACL read needs. The
# password goes through the environment, never onto the (xtrace-logged) command line.
function byok_check_service_token {
    local consumer=$1
    local auth_endpoint
    auth_endpoint=$(byok_auth_endpoint)
    if ! (
        set +o xtrace
        unset OS_CLOUD OS_TOKEN OS_AUTH_TYPE OS_SYSTEM_SCOPE OS_PROJECT_ID OS_DOMAIN_ID \
            OS_DOMAIN_NAME
        export OS_PASSWORD="$SERVICE_PASSWORD"
        openstack --os-auth-url "$auth_endpoint" --os-identity-api-version 3 \
            --os-username "$consumer" --os-user-domain-name "$SERVICE_DOMAIN_NAME" \
            --os-project-name "$SERVICE_PROJECT_NAME" \
            --os-project-domain-name "$SERVICE_DOMAIN_NAME" \
            token issue -f value -c project_id >/dev/null
    ); then
        die $LINENO "byok smoke: service user '$consumer' cannot get a token for project '$SERVICE_PROJECT_NAME'; Barbican ACL reads would fail"
    fi
    echo "byok smoke: service user $consumer gets a project-scoped token"
}

# Offline part: each configured file, loaded the way the service loads it, makes castellan
# return a ByokKeyManager for the right consumer. Online part: the service users' tokens.
function byok_smoke {
    local python list ids_file consumer conf user_id
    python=$(byok_python)
    list=$(byok_configured_list)
    ids_file=$(byok_service_users_list)
    if [[ ! -s "$list" ]]; then
        echo "byok smoke: no cinder or nova on this node, nothing to check"
        return 0
    fi
    while read -r -u 3 consumer conf; do
        "$python" "$BYOK_PLUGIN_DIR/tools/byok-check-conf.py" --consumer "$consumer" "$conf" \
            || die $LINENO "byok smoke: $conf does not load backend byok for $consumer"
    done 3<"$list"
    if is_service_enabled key && [[ -s "$ids_file" ]]; then
        while read -r -u 3 consumer user_id; do
            byok_check_service_token "$consumer"
        done 3<"$ids_file"
    fi
    byok_smoke_keypath "$list"
}

# The smoke experiment: as the user of BYOK_SMOKE_CLOUD, a fresh key goes through Cinder's key
# calls (get for a volume, clone's store, volume delete) with the key manager cinder.conf builds;
# Barbican must show it shared, never copied, never deleted (devstack/tools/byok-smoke-keypath.py).
function byok_smoke_keypath {
    local list=$1 python consumer conf
    if [[ -z "$BYOK_SMOKE_CLOUD" ]]; then
        echo "byok smoke: BYOK_SMOKE_CLOUD is empty, key path experiment not run"
        return 0
    fi
    python=$(byok_python)
    while read -r -u 3 consumer conf; do
        [[ "$consumer" == "cinder" ]] || continue
        "$python" "$BYOK_PLUGIN_DIR/tools/byok-smoke-keypath.py" --cloud "$BYOK_SMOKE_CLOUD" \
            "$conf" || die $LINENO "byok smoke: the key path experiment failed through $conf"
        return 0
    done 3<"$list"
    echo "byok smoke: no cinder.conf configured, key path experiment not run"
}

# Clean
# -----

function cleanup_byok {
    if [[ -d "${BYOK_STATE_DIR:?}" ]]; then
        rm -rf "${BYOK_STATE_DIR:?}"
    fi
}

# Dispatch
# --------

if is_service_enabled byok; then
    if [[ "${1:-}" == "stack" && "${2:-}" == "install" ]]; then
        echo_summary "Installing byok (castellan backend for user-supplied volume keys)"
        install_byok
    elif [[ "${1:-}" == "stack" && "${2:-}" == "post-config" ]]; then
        echo_summary "Configuring byok as the key manager of Cinder and Nova"
        configure_byok
    elif [[ "${1:-}" == "stack" && "${2:-}" == "extra" ]]; then
        byok_check_backend
        if [[ "$(trueorfalse False BYOK_RUN_SMOKE)" == "True" ]]; then
            echo_summary "byok smoke check"
            byok_smoke
        fi
    fi

    if [[ "${1:-}" == "unstack" ]]; then
        # byok runs no process of its own: Cinder and Nova load it in-process.
        :
    fi

    if [[ "${1:-}" == "clean" ]]; then
        cleanup_byok
    fi
fi
