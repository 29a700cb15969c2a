"""memcal's measurement core: build a model, run one workload, record its memory in bytes.

`measure(model, workload, device=...)` is the entry point; `build_model` + `run_point` keep building
apart from running so that a sweep can reuse one built model across points. Importing this package
imports torch; the estimator never does.
"""
