"""Online churn and repurchase models: features, river pipelines, delayed labels.

Pure logic, no I/O: the customer shards (and ``engage eval-churn``) call
:class:`~engage.models.keeper.ModelKeeper`, which reads a customer's state at
a prediction point, scores it, keeps the example until its label is known in
event time, and only then learns from it.
"""
