"""Applications built on the synthaug library: the sweep, the evaluation and the demo.

An application may import the library (``synthaug.data``, ``ldm``, ``text``, ``mix``, ``metrics``,
``generate``, ``config``); the library never imports an application (``tests/test_layers.py``).
"""
