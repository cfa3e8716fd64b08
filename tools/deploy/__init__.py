"""Deployments on this machine: ``deploy.sh``, the plain launcher (a SuperLink and SuperNodes
on this host); the link lab (``linklab``: SuperNodes behind shaped veth links in network
namespaces); process records (``processes``); and per-link transfer times from sampled
kernel counters (``wiretime``)."""
