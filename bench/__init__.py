"""Load tests and benchmarks of planpulse: the client (`bench.loadtest`, also `python run.py
loadtest`), a bare-websockets baseline server (`bench.baseline_server`), the scenarios of the
issue (`bench.scenarios`) and their plots (`bench.plot`). Figures live in bench/README.md.
"""
