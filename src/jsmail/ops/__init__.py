"""Running jsmail: metrics and the status page (:mod:`jsmail.ops.web`), counted from
the operator log (:mod:`jsmail.ops.observer`); the JSON log format
(:mod:`jsmail.ops.logformat`); ``jsmail trace`` (:mod:`jsmail.ops.trace`) and
``jsmail check`` (:mod:`jsmail.ops.check`).  The series themselves are in
:mod:`jsmail.metrics`, which any module may import."""
