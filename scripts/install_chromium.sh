#!/usr/bin/env bash
# The report's browser tests (tests/unit/test_report_browser.py) render pages in Debian's headless Chromium.
# Install it when absent; where it cannot be installed the tests are skipped, saying why.
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    echo "chromium is not installed (needs apt-get as root): the browser tests of the report will be skipped"
    exit 0
fi
{ apt-get install -y -qq chromium >/dev/null 2>&1 \
  || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; } \
  || echo "chromium could not be installed: the browser tests of the report will be skipped"
exit 0
