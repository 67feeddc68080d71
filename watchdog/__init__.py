"""The Halton Meter watchdog, installed as ``halton_watchdog``.

The folder is called ``watchdog/`` in the repository; it is packaged under another
import name so it can never shadow the PyPI ``watchdog`` library.
"""
