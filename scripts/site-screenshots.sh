#!/usr/bin/env bash
# Screenshots of the site's main views for the README (docs/site-*.png), from the committed page:
# the predictor answering for Llama-3.2-3B at 2048 tokens on a T4, and the compare view of the
# T4 and the L4, and the job estimate for the README's example. Needs Debian's chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
page="file://$PWD/results/site/index.html"
shot() {  # shot NAME QUERY HEIGHT
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="1100,$3" \
    --screenshot="docs/site-$1.png" "$page?$2" 2>/dev/null
}
shot predict "view=predict&card=t4&model=llama-3.2-3b&seq=2048&rank=16" 600
shot compare "view=summary-section&compare=t4,l4,rtx3070" 900
shot job "view=job&jcard=t4&jmodel=llama-3.2-3b&examples=5000&tokens=512&epochs=2" 500
