"""Media benchmark: load generation, the systems under test, capacity sweeps and reports.

``bench/`` at the repository root runs the side-by-side comparison (gateway, rtpengine, direct);
``gateway bench`` runs the operator's capacity report against this host's own media workers.
"""
