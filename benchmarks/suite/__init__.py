"""The benchmark suite (``make bench`` = ``python -m benchmarks.suite --plan quick``).

Every input pipeline, on the same rows, one run, ratios of figures of that run:

* ``__main__``: the driver: the phases, the plans, one child process per measurement;
* :mod:`~benchmarks.suite.data`: the datasets (synthetic sources and their shards);
* :mod:`~benchmarks.suite.io`: ``seq[i]`` against memcpy and ``dd``, ``npyseq convert`` against ``cp``;
* :mod:`~benchmarks.suite.methods`: the compared pipelines, built the way their users build them;
* :mod:`~benchmarks.suite.baselines`: the hand-written readers npyseq is compared with;
* :mod:`~benchmarks.suite.child`: one measurement in a fresh process (``RESULT {json}``);
* :mod:`~benchmarks.suite.targets`: the targets P1-P7, defined there, and their evaluation;
* :mod:`~benchmarks.suite.report`: the Markdown tables and the plots.
"""
