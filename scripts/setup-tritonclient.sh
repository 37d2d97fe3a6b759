#!/usr/bin/env bash
# NVIDIA Triton's own Python client (HTTP and gRPC, `tritonclient[all]` from
# PyPI, pinned) in .fixtures/triton-venv, for the Open Inference Protocol
# test (crates/cli/tests/kserve_client.py). Prints the venv's python.
exec "$(dirname "$0")/pip-tool.sh" triton-venv "tritonclient[all]==2.73.0" python
