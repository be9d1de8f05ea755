"""Features for recommenders: the behaviour-stats stage, publishing to Feast, the point-in-time training frame,
online feature reads for rankers and the one definition of the model input vector (Feast itself is reached only
through ``llmfeat.feast``)."""
