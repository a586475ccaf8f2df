# Metadata lives in setup.cfg; this shim lets `pip install -e .` work with old pips.
from setuptools import setup

setup()
