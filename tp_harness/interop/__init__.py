"""lm-eval interoperability: exported tasks and results JSON, lm-eval's view of a spec's data and of
tp-harness's metrics, and conformance with lm-eval's upstream tasks."""
