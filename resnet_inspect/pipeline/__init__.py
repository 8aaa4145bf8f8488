"""The orchestration both the Python API and the CLI call: load the model, run the one instrumented pass, run the
analyses over its records and build the report objects (``report/`` holds the reports and their views only).

One module per command family: ``build`` (capture, summary, verify), ``compare``, ``rf``, ``timing``, ``arith``,
``registry``, ``fit``.
"""
