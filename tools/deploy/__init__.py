"""Deployments on this machine: ``deploy.sh``, the plain launcher (a SuperLink and SuperNodes
on this host); the link lab (``linklab``: SuperNodes behind shaped veth links in network
namespaces); and process records (``processes``). (Per-link transfer times from sampled
kernel counters live on the app side: ``server_app.calibration``.)"""
