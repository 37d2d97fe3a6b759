#!/usr/bin/env bash
# A real S3-compatible server for the model-repository tests: moto's server
# mode from PyPI, in .fixtures/moto-venv. Prints the path of `moto_server`
# (the tests read it from MOTO_SERVER, or find it at this path).
exec "$(dirname "$0")/pip-tool.sh" moto-venv "moto[server]==5.2.5" moto_server
