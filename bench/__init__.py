"""The benchmark harness (``wallet bench``). The foundation ships ``bench/load.py``, a small
closed-loop HTTP load script; the throughput issue grows this into the full harness."""
