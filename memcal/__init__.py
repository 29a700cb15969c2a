"""memcal's command line: thin verbs over the `estimator` and `harness` packages."""
__version__ = "0.1.0"
