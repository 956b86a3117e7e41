"""Local submission: a UNIX socket on which the gateway takes mail from the users of
this host, knowing each one by the socket's peer credentials (:mod:`.listener`), and
the client ``jsmail-sendmail`` uses to reach it (:mod:`.client`).  ``docs/submission.rst``
says why a socket and who may give which envelope sender."""
