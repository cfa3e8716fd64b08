"""Deployments on this machine: the link lab (``linklab``: SuperNodes behind shaped veth
links in network namespaces), process records (``processes``) and per-link transfer times
from sampled kernel counters (``wiretime``). ``scripts/deploy.sh`` is the plain launcher."""
