"""One module per task-data file format a YAML can name, plus what they share (:mod:`.common`).

Each reader takes file paths and plain arguments and returns plain records; which YAML format and task
kind it serves, and how a ``TaskSpec`` maps onto its arguments, is said once in
:mod:`plm.evaluation.formats`, so the readers stay usable (and testable) without a task YAML.
"""
