"""The label-efficiency experiment of docs/results.md: rows as data, a runner, and the report generator.

``config/experiments.yaml`` defines the rows (``occle-train --set`` overrides) and the protocol;
:mod:`occle_experiments.runner` trains and evaluates one row with one seed and records it in
``docs/results.json``; :mod:`occle_experiments.report` renders that file into ``docs/results.md``.
``python -m occle_experiments run|pilot|report`` is the command line. The core (``occle_core``) never
imports this package.
"""
