"""Benchmarks of regcore against classical registration: accuracy, speed, scaling, app latency, load and memory.

Run each as a module from the repository's top folder, e.g. ``python -m benchmarks.run --quick``;
they import the installed ``regcore`` (``pip install -r requirements-bench.txt`` installs it in
editable mode). Results go to ``benchmarks/results/``. Nothing in ``regcore/`` imports this package.
"""
