#!/usr/bin/env bash
# The prepared GPU check: `pytest -m gpu`, then benchmarks/gpu.py, then one table of both. Each part has
# its own time box, so a part that hangs or runs long still leaves the others' results; 8 minutes in all.
#
#   bash benchmarks/gpu_check.sh            # here or on a GPU host; a CPU machine skips every gpu test
#                                           # with its reason and the benchmark says "no CUDA device"
#   bash benchmarks/gpu_check.sh --wheels   # on a machine with pip access: fetch into .whl/ the wheels a
#                                           # bare GPU host with its own torch lacks (pydantic and its parts)
#
# On a host without this project's venv (a GPU machine with its own torch, e.g. 2.11), replearn runs from
# src/ over that torch (`pip install --no-deps`), with the .whl/ wheels installed beside it in /tmp/site.
# Results: $OUT (or ./gpu-check) gets pytest.log, junit.xml, gpu.json and summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(pydantic pydantic_core annotated-types typing-inspection)

if [[ "${1:-}" == "--wheels" ]]; then
    pins=()
    for name in "${WHEELS[@]}"; do pins+=("$(grep -i "^${name}==" constraints.txt)"); done
    exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
fi

out=${OUT:-gpu-check}
mkdir -p "$out"
rm -f "$out/junit.xml" "$out/gpu.json"
PYTHON=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
export ZENML_ANALYTICS_OPT_IN=false PYTHONUNBUFFERED=1
status=0

if ! $PYTHON -c "import replearn" 2>/dev/null; then
    echo "== setup: replearn over this host's torch $($PYTHON -c 'import torch; print(torch.__version__)')"
    if compgen -G ".whl/*.whl" >/dev/null; then
        timeout 60 $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || status=1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    timeout 60 $PYTHON -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/replearn . ||
        status=1
    export PYTHONPATH=/tmp/replearn:$PYTHONPATH
fi

echo "== pytest -m gpu (at most 270 s)"
timeout 270 $PYTHON -m pytest -m gpu -p no:cacheprovider -o addopts= --strict-markers -rs \
    --junitxml="$out/junit.xml" tests/test_gpu.py tests/test_distributed.py 2>&1 | tee "$out/pytest.log"
tests_rc=${PIPESTATUS[0]}
(( tests_rc == 0 )) || status=1

echo "== benchmarks/gpu.py (at most 150 s)"
timeout 150 $PYTHON benchmarks/gpu.py --json "$out/gpu.json" || status=1

$PYTHON - "$out" "$tests_rc" <<'EOF' | tee "$out/summary.txt"
"""One table: every gpu test's outcome (with a skip's reason), then the benchmark's rows."""
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

out, tests_rc = Path(sys.argv[1]), int(sys.argv[2])
print(f"\n{'part':<8} {'what':<90} result")
junit = out / "junit.xml"
if not junit.is_file():
    print(f"{'tests':<8} {'pytest -m gpu':<90} no result (exit {tests_rc}: timed out or failed to start)")
else:
    for case in ET.parse(junit).iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        outcome = next(iter(case), None)
        if outcome is None:
            result = "passed"
        elif outcome.tag == "skipped":
            result = f"skipped: {outcome.get('message', '').removeprefix('skipped: ')}"
        else:
            result = f"{outcome.tag}: {(outcome.get('message') or '').splitlines()[0][:80]}"
        print(f"{'test':<8} {name:<90} {result}")
bench = out / "gpu.json"
if not bench.is_file():
    print(f"{'bench':<8} {'benchmarks/gpu.py':<90} no numbers (no CUDA device, or it timed out)")
else:
    results = json.loads(bench.read_text())
    for kind, how, value in results["rows"]:
        value = f"{value:,.0f} images/s" if isinstance(value, float) else value
        print(f"{'bench':<8} {kind + ' ' + how + ' on ' + results['device']:<90} {value}")
EOF
exit $status
