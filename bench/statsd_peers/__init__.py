"""Helpers of bench/statsd_throughput.py: the traffic (traffic.py), what is read from the machine
(measure.py), and one module per server under test (sidecar, netdata, collectd, etsy)."""
