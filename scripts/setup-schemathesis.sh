#!/usr/bin/env bash
# Schemathesis for the schema-driven API test, in .fixtures/st-venv. Prints
# the path of `st` (the test reads it from ST_BIN, or finds it at this path).
exec "$(dirname "$0")/pip-tool.sh" st-venv "schemathesis==4.32.5" st
