"""The papers' own analyses, beyond their tables (issue 19): each study a module that measures
what a paper claims on gbml's algorithms and writes ``reports/studies/<name>/``.

* ``feature_reuse``: Raghu et al. (2020), representation similarity before/after the inner
  loop and freezing layers at test time (``similarity``: CKA and CCA).

A study module has ``OUTPUTS`` (the files it writes) and ``run(params, cfg, workspace, out,
progress) -> metrics``; its config is ``gbml.studies.config``'s, its entry in
``gbml.studies.registry``.
"""
