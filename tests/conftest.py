import os
import sys

# Test helpers shared with the benchmarks and the demo (memcap, memwatch).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
