#!/bin/sh
# One-shot compose job (temporalio/admin-tools): register the namespace unship runs in, once the server
# answers. Safe to re-run: an existing namespace is left as it is.
set -eu

: "${TEMPORAL_ADDRESS:?}" "${NAMESPACE:?}" "${NAMESPACE_RETENTION:=720h}"

tries=0
until temporal operator cluster health --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 30 ]; then
        echo "unship: Temporal at ${TEMPORAL_ADDRESS} is not healthy after ${tries} tries" >&2
        exit 1
    fi
    sleep 2
done

if temporal operator namespace describe -n "$NAMESPACE" --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1; then
    echo "unship: namespace ${NAMESPACE} already exists"
else
    temporal operator namespace create -n "$NAMESPACE" --retention "$NAMESPACE_RETENTION" \
        --address "$TEMPORAL_ADDRESS"
    echo "unship: namespace ${NAMESPACE} created (retention ${NAMESPACE_RETENTION})"
fi
