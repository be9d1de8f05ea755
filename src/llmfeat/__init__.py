"""llmfeat: text -> language-model embeddings -> recommender features (Spark, Feast, FAISS)."""

__version__ = "0.1.0"
