"""The application built on the :mod:`ann2snn` library: what ``ann2snn train|convert|table|energy|
frontier|run`` does.

- :mod:`~ann2snn.app.cli`: the command line (parser, error handling, exit codes);
  :mod:`~ann2snn.app.commands`: the sub-commands and their one preamble;
  :mod:`~ann2snn.app.outputs`: output paths checked before any work;
- :mod:`~ann2snn.app.config`: run configs (YAML files and ``--key value`` overrides);
- :mod:`~ann2snn.app.pipeline`: the one module that turns a config into library calls;
- :mod:`~ann2snn.app.train`: the training loop; :mod:`~ann2snn.app.distributed`: torchrun / DDP;
- :mod:`~ann2snn.app.data`: datasets and what loading them may not do;
- :mod:`~ann2snn.app.rundir`, :mod:`~ann2snn.app.checkpoint`, :mod:`~ann2snn.app.files`: run
  folders, checkpoints, and every file written (atomically); :mod:`~ann2snn.app.preflight`:
  checks before a model is built;
- :mod:`~ann2snn.app.report`, :mod:`~ann2snn.app.plots`: tables, CSV / JSON and figures.

The library never imports from here.
"""
