"""The benchmark of issue 13: ChatBridge beside a direct call and a naive relay, in one run.

`python -m bench` (or `python -m bench --quick`) from the repository root; see bench/run.py.
"""
