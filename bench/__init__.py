"""The benchmark harness behind `make bench`: nginx baselines, the gateway cases and the scale cases."""
