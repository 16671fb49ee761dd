"""An active/standby pair of gateways sharing one site's state in Redis (issue 14).

``role`` is the sans-IO role machine, ``settings`` the ``[ha]`` table, ``replica`` the Redis
side (the active's writer, the standby's warm copy), ``node`` the glue the composition root
holds, ``commands`` the ``gateway ha`` commands. docs/high-availability.md has the operator's
view: topology, keepalived, what is kept, the drill.
"""
