"""`build-image serve`: one warm, long-running build service that many users reach.

    protocol.py   the wire format both ends share (light: the client imports only this)
    auth.py       who is asking: SO_PEERCRED on the unix socket; PAM (Basic) or tokens over TLS;
                  failed logins rate-limited per user and per address
    queue.py      --max-builds slots handed out fairly across users
    sshrelay.py   --ssh: the client's agent relayed over the build's connection
    worker.py     a forked worker per request: a build through builder.pipeline.build(), or one
                  image command through the CLI's own code, in the user's image namespace
    server.py     HTTP/1.1 over a unix socket and TLS TCP, the routing table, SIGTERM
"""
