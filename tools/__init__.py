"""Measuring tools shared by the tests, the demo and the benchmarks (not part of npyseq).

* :mod:`tools.memcap`: run a command under a cgroup v1 memory cap (root only), and drop a file
  from the page cache;
* :mod:`tools.memwatch`: peak anonymous memory of a process tree, sampled in a thread;
* :mod:`tools.synthetic`: the synthetic ``x.npy``/``y.npy`` sources (CIFAR-sized float32 rows and
  labels a model can learn), written in chunks;
* :mod:`tools.timing`: a Keras callback that times each epoch.

Import them from the repository root (``python -m ...``, ``pytest``; ``examples/demo.py`` puts the
root on its path itself). Nothing here imports Keras at import time except :mod:`tools.timing`.
"""
