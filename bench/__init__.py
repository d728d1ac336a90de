"""Benchmarks of the sync engine against the local Graph emulator (with injected latency) and Azurite.

One entry point, ``python -m bench.run [--quick] [--only NAME]`` (``make bench``): it starts its own
Azurite and emulator, runs each benchmark's measurements in fresh worker processes (so wall time, CPU
time and peak RSS belong to the code measured), writes ``bench/results/<name>.json`` and regenerates
``docs/performance.md`` with its plots under ``docs/img/``. Nothing here is a test: no timed assertions.
"""
