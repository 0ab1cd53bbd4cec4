#!/bin/sh
# Starts etcd once `etcdbrctl server` has validated (and if needed restored) its data dir,
# as the reference's etcd image does (gardener/etcd-custom-image bootstrap.sh):
#
#   1. choose the validation mode: `sanity` when etcd last stopped cleanly (exit code 0, 130
#      or 143 recorded in the validation marker), `full` after a crash or on first start;
#   2. GET /initialization/start?mode=..., then poll /initialization/status until Successful
#      (Failed is retried: reading it resets the server to New);
#   3. GET /config (the etcd config made concrete for this member) and start etcd with it;
#   4. wait for etcd, forward SIGTERM/SIGINT to it, record its exit code for the next start.
#
# Environment (all optional):
#   BACKUP_ENDPOINT   the server's URL                      (http://127.0.0.1:8080)
#   BACKUP_TOKEN      its --server-auth-token, if set
#   CURL_OPTS         extra curl options, e.g. "--cacert /var/etcd/ssl/ca/ca.crt" for HTTPS
#   ETCD_BIN          the etcd binary                       (etcd)
#   ETCD_CONFIG_OUT   where the served config is written    (/tmp/etcd.conf.yaml)
#   VALIDATION_MARKER where etcd's last exit code is kept   (/var/etcd/data/validation_marker)
#   POLL_SECONDS      pause between status polls            (1)
set -u

BACKUP_ENDPOINT=${BACKUP_ENDPOINT:-http://127.0.0.1:8080}
ETCD_BIN=${ETCD_BIN:-etcd}
ETCD_CONFIG_OUT=${ETCD_CONFIG_OUT:-/tmp/etcd.conf.yaml}
VALIDATION_MARKER=${VALIDATION_MARKER:-/var/etcd/data/validation_marker}
POLL_SECONDS=${POLL_SECONDS:-1}

log() { echo "etcd-bootstrap: $*" >&2; }

# curl with the token (if any) and the caller's options; prints the body, fails on HTTP >= 400.
api() {
    if [ -n "${BACKUP_TOKEN:-}" ]; then
        # shellcheck disable=SC2086 # CURL_OPTS is a list of options
        curl -fsS ${CURL_OPTS:-} -H "Authorization: Bearer ${BACKUP_TOKEN}" "${BACKUP_ENDPOINT}$1"
    else
        # shellcheck disable=SC2086
        curl -fsS ${CURL_OPTS:-} "${BACKUP_ENDPOINT}$1"
    fi
}

validation_mode() {
    if [ -f "$VALIDATION_MARKER" ]; then
        case "$(cat "$VALIDATION_MARKER")" in
            0|130|143) echo sanity; return ;;
        esac
    fi
    echo full
}

initialize() {
    mode=$1
    log "initializing the data dir (validation mode: $mode)"
    while true; do
        status=$(api /initialization/status) || { log "backup server not reachable yet"; sleep "$POLL_SECONDS"; continue; }
        case "$status" in
            New) api "/initialization/start?mode=$mode" >/dev/null || log "start request failed" ;;
            Progress) ;;
            Successful) log "initialization succeeded"; return 0 ;;
            Failed) log "initialization failed; the server's log or status page says why; retrying" ;;
            *) log "unexpected status: $status" ;;
        esac
        sleep "$POLL_SECONDS"
    done
}

fetch_config() {
    while ! api /config >"$ETCD_CONFIG_OUT.part"; do
        log "cannot get /config yet; retrying"
        sleep "$POLL_SECONDS"
    done
    mv "$ETCD_CONFIG_OUT.part" "$ETCD_CONFIG_OUT"
}

initialize "$(validation_mode)"
fetch_config
rm -f "$VALIDATION_MARKER"
log "starting $ETCD_BIN --config-file $ETCD_CONFIG_OUT"
"$ETCD_BIN" --config-file "$ETCD_CONFIG_OUT" &
ETCD_PID=$!
trap 'kill -TERM $ETCD_PID' TERM
trap 'kill -INT $ETCD_PID' INT
# `wait` returns early when a trapped signal arrives; wait again for etcd's real exit.
while true; do
    wait "$ETCD_PID"
    code=$?
    kill -0 "$ETCD_PID" 2>/dev/null || break
done
mkdir -p "$(dirname "$VALIDATION_MARKER")"
echo "$code" >"$VALIDATION_MARKER"
log "etcd exited with $code"
exit "$code"
