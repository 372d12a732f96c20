#!/usr/bin/env bash
# Build the one-folder Linux app with PyInstaller and smoke-test the binary offscreen.
#   bash packaging/desktop/build.sh            -> dist/bandmate/bandmate
# PyInstaller is installed into build/pyinstaller-tools (pip --target), not into the venv.
# Prints the build time and the bundle size; exits non-zero if the binary does not start.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
TOOLS=build/pyinstaller-tools
if ! PYTHONPATH=$TOOLS $PY -c "import PyInstaller" 2>/dev/null; then
  $PY -m pip install --quiet --target "$TOOLS" "pyinstaller>=6.10"
fi
start=$(date +%s)
PYTHONPATH=$TOOLS $PY -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath dist --workpath build/pyinstaller packaging/desktop/bandmate.spec
end=$(date +%s)
echo "build: $((end - start)) s, bundle $(du -sh dist/bandmate | cut -f1)"

BIN=dist/bandmate/bandmate
export QT_QPA_PLATFORM=offscreen JACK_NO_START_SERVER=1
"$BIN" --version
"$BIN" app --version
# the window itself: open a chorale, generate with the bundled model (when one ships; else a
# "No model" message), render the window to PNG, exit. MODEL=DIR uses another model folder.
shot=$(mktemp --suffix=.png)
XDG_CONFIG_HOME=$(mktemp -d) timeout 120 "$BIN" app tests/data/jsfakes-0.mid \
  ${MODEL:+--model "$MODEL"} --seed 1 --screenshot "$shot"
test -s "$shot"
echo "smoke test passed: window rendered to $shot"
