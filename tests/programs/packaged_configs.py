"""Loads a packaged config by name, for tests/test_packaged_configs.py (run in an empty folder, with only this tree
on PYTHONPATH).

Usage: packaged_configs.py. Prints the algorithms of the `int8` config and the list of packaged configs.
"""

import keras_compress.config as c

print(c.load_config("int8").algorithm_names(), c.list_configs())
