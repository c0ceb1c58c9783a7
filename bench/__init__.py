"""Benchmarks. `python -m bench` runs the performance benchmarks (see bench/__main__.py); the other
scripts here measure correctness and calibration and are run as `python bench/NAME.py`."""
