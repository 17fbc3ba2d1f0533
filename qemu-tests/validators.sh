#!/bin/bash
# The standard validators a reviewer would run, installed into a virtual
# environment under target/ (never system-wide): spdx-tools (pyspdxtools),
# check-jsonschema, and cyclonedx-python-lib for the CycloneDX 1.6 JSON
# schema it bundles (so no schema is fetched from the network at check time).
# Idempotent: does nothing once target/venv/.ok names these exact pins.
# Needs python3 with venv (Debian: python3-venv) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CAIRN_VENV:-target/venv}
PINS="spdx-tools==0.8.5 check-jsonschema==0.39.0 cyclonedx-python-lib==11.12.0"
if [ -f "$VENV/.ok" ] && [ "$(cat "$VENV/.ok")" = "$PINS" ]; then
	exit 0
fi
rm -rf "$VENV"
python3 -m venv "$VENV"
# shellcheck disable=SC2086
"$VENV/bin/pip" install --quiet --disable-pip-version-check $PINS
"$VENV/bin/pyspdxtools" --help >/dev/null
"$VENV/bin/check-jsonschema" --version >/dev/null
"$VENV/bin/python" -c 'import cyclonedx.schema._res as r, os; assert os.path.isfile(os.path.join(os.path.dirname(r.__file__), "bom-1.6.SNAPSHOT.schema.json"))'
echo "$PINS" >"$VENV/.ok"
echo "validators installed in $VENV: $PINS"
