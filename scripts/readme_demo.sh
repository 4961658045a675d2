#!/bin/sh
# The README's "What you see" example, from a real run: a small "shop" workflow run in a tmux pane
# of 96 columns, the screen captured mid-run (once `integration` is in its step 2) and at the end,
# then `loom report` of that run and its screenshot in headless chromium (docs/report.png).
# Usage: PYTHON=/path/to/venv/python scripts/readme_demo.sh   (from the repo root; prints both screens)
set -eu
PYTHON=${PYTHON:-python3}
ROOT=$(pwd)
DEMO=/tmp/terminal-demo
SOCK=loom-readme-demo-$$
rm -rf "$DEMO" && mkdir -p "$DEMO/shop/.loom"
cat > "$DEMO/shop/.loom/workflow.yml" <<'YML'
version: v1
stages: [build, test, ship]
default:
  target: linux
build:
  stage: build
  script: ["sleep 1.4"]
lint:
  stage: build
  script: ["sleep 0.6"]
docs:
  stage: test
  needs: [lint]
  script: ["sleep 0.5"]
unit:
  stage: test
  needs: [build]
  script: ["sleep 0.6", "sleep 0.3"]
integration:
  stage: test
  needs: [build]
  script:
    - echo starting the services
    - sleep 1.2
    - for t in login cart search; do echo "PASS test_$t"; done; echo "FAIL test_checkout expected 200, got 500" >&2; exit 1
ship:
  stage: ship
  needs: [integration]
  script: ["true"]
YML
env -u NO_COLOR -u CI PYTHONPATH="$ROOT" tmux -L "$SOCK" -f /dev/null new-session -d -x 96 -y 40 \
  "cd $DEMO/shop && $PYTHON -m loomrun run --local -j 2; touch $DEMO/done; sleep 600"
trap 'tmux -L "$SOCK" kill-server 2>/dev/null || true' EXIT
until tmux -L "$SOCK" capture-pane -p | grep -q '^  integration  host    step 2/3'; do sleep 0.02; done
tmux -L "$SOCK" capture-pane -p | awk 'NF {last = NR} {line[NR] = $0} END {for (i = 1; i <= last; i++) print line[i]}' > "$DEMO/mid.txt"
until [ -e "$DEMO/done" ]; do sleep 0.05; done
tmux -L "$SOCK" capture-pane -p -J | awk 'NF {last = NR} {line[NR] = $0} END {for (i = 1; i <= last; i++) print line[i]}' > "$DEMO/end.txt"
echo "--- mid-run"; cat "$DEMO/mid.txt"; echo "--- at the end"; cat "$DEMO/end.txt"
RUN=$(sed -n 's/^receipt: .*\/\(loom-run-local-[0-9]*\)\.json$/\1/p' "$DEMO/end.txt")
(cd "$DEMO/shop" && PYTHONPATH="$ROOT" "$PYTHON" -m loomrun report "$RUN" -o "$DEMO/report.html")
chromium --headless --no-sandbox --disable-gpu --no-first-run --user-data-dir="$DEMO/profile" \
  --hide-scrollbars --window-size=1180,780 --screenshot="$ROOT/docs/report.png" "file://$DEMO/report.html"
